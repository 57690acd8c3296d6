//! `natkit nat-type` against real Linux NATs: one lab per behaviour (network
//! namespaces + nftables, tests/lab/natlab.sh), coturn as the RFC 5780 server
//! on two public IPs, natkit run inside the client namespace.

mod common;

use common::coturn::{Coturn, CoturnConfig};
use common::lab::{Hairpin, Lab, NatKind};
use common::{json_of, natkit};
use serde_json::Value;

const SERVER: &str = "203.0.113.1:3478";
const OTHER: &str = "203.0.113.2:3479";

/// A lab with the given NATs and coturn (RFC 5780, two IPs) in its public namespace.
fn lab_with_server(nats: &[(&str, NatKind, Hairpin)], extra_coturn_args: &[&str]) -> (Lab, Coturn) {
    let mut b = Lab::builder();
    for (name, kind, hp) in nats {
        b = b.nat_with(name, *kind, *hp);
    }
    let lab = b.build();
    let mut cfg = CoturnConfig::rfc5780_in(&lab.public_ns(), "203.0.113.1", "203.0.113.2");
    cfg.args = extra_coturn_args.iter().map(|s| s.to_string()).collect();
    let ct = Coturn::start(cfg);
    (lab, ct)
}

fn nat_type(lab: &Lab, nat: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["nat-type", "--server", SERVER, "--json"];
    args.extend_from_slice(extra);
    let out = lab.natkit_in(&lab.client_ns(nat), &args);
    (out.status.code(), json_of(&out))
}

fn test_named<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["tests"]
        .as_array()
        .expect("tests array")
        .iter()
        .find(|t| t["test"] == name)
        .unwrap_or_else(|| panic!("no test {name} in {v:#}"))
}

/// The fields every RFC 5780 run has, whatever the NAT.
fn assert_common(v: &Value, lab: &Lab, nat: &str) {
    let n = lab.nat(nat);
    let local: std::net::SocketAddr = v["local"].as_str().expect("local").parse().expect("local addr");
    assert_eq!(local.ip().to_string(), n.client_ip.to_string(), "{v:#}");
    assert_eq!(v["server"]["address"], SERVER);
    assert_eq!(v["server"]["other_address"], OTHER);
    assert_eq!(v["server"]["rfc5780"], true);
    assert!(v["lifetime_s"].is_null());
    assert!(v["rtt_ms"].as_f64().expect("rtt") >= 0.0);
    assert!(v["meaning"].as_str().is_some_and(|m| !m.is_empty()));
    let m1 = test_named(v, "mapping-1");
    assert_eq!(m1["destination"], SERVER);
    assert_eq!(m1["result"]["outcome"], "answered");
    assert_eq!(m1["result"]["mapped"], v["public"]);
    let f2 = test_named(v, "filtering-2");
    assert_eq!(f2["change_request"]["change_ip"], true);
    assert_eq!(f2["change_request"]["change_port"], true);
    let f3 = test_named(v, "filtering-3");
    assert_eq!(f3["change_request"]["change_ip"], false);
    assert_eq!(f3["change_request"]["change_port"], true);
    let m2 = test_named(v, "mapping-2");
    assert_eq!(m2["destination"], "203.0.113.2:3478");
    assert_eq!(m2["result"]["outcome"], "answered");
}

fn public_ip(v: &Value) -> String {
    let p: std::net::SocketAddr = v["public"].as_str().expect("public").parse().expect("public addr");
    p.ip().to_string()
}

#[test]
fn open_lab_is_open_internet() {
    let (lab, _ct) = lab_with_server(&[("o", NatKind::Open, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "o", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "o");
    assert_eq!(v["nat_type"], "open-internet", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent");
    assert_eq!(v["filtering"], "endpoint-independent");
    assert_eq!(v["public"], v["local"], "no translation");
    assert_eq!(v["port_preservation"], true);
    assert_eq!(v["hairpinning"], true, "a host reaches its own address");
    assert!(v["port_allocation"].is_null());
    assert_eq!(test_named(&v, "filtering-2")["result"]["outcome"], "answered");
    assert_eq!(test_named(&v, "filtering-2")["result"]["from"], OTHER);
}

#[test]
fn firewalled_public_host_is_a_symmetric_udp_firewall() {
    let (lab, _ct) = lab_with_server(&[("w", NatKind::Firewall, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "w", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "w");
    assert_eq!(v["nat_type"], "symmetric-udp-firewall", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent");
    assert_eq!(v["filtering"], "address-and-port-dependent");
    assert_eq!(v["public"], v["local"]);
}

#[test]
fn full_cone_lab_is_full_cone() {
    let (lab, _ct) = lab_with_server(&[("f", NatKind::FullCone, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "f", &["--ports", "4"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "f");
    assert_eq!(v["nat_type"], "full-cone", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent");
    assert_eq!(v["filtering"], "endpoint-independent");
    assert_eq!(public_ip(&v), lab.nat("f").public_ip.to_string());
    assert_eq!(v["port_preservation"], true);
    assert_eq!(v["hairpinning"], false);
    assert_eq!(v["port_allocation"]["pattern"], "preserving");
    assert_eq!(v["port_allocation"]["samples"].as_array().expect("samples").len(), 4);
    // mapping-3 goes out with mapping-2; whichever answer comes first, it cannot contradict.
    let m3 = &test_named(&v, "mapping-3")["result"];
    assert!(m3["outcome"] == "skipped" || m3["mapped"] == v["public"], "{m3:#}");
}

#[test]
fn restricted_cone_lab_filters_by_address() {
    let (lab, _ct) = lab_with_server(&[("r", NatKind::RestrictedCone, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "r", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "r");
    assert_eq!(v["nat_type"], "restricted-cone", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent");
    assert_eq!(v["filtering"], "address-dependent");
    assert_eq!(public_ip(&v), lab.nat("r").public_ip.to_string());
    assert_eq!(v["port_preservation"], true);
    assert_eq!(v["hairpinning"], false);
    assert_eq!(test_named(&v, "filtering-2")["result"]["outcome"], "timeout");
    assert_eq!(test_named(&v, "filtering-3")["result"]["outcome"], "answered");
    assert_eq!(test_named(&v, "filtering-3")["result"]["from"], "203.0.113.1:3479");
}

#[test]
fn port_restricted_cone_lab_filters_by_address_and_port() {
    let (lab, _ct) = lab_with_server(&[("p", NatKind::PortRestrictedCone, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "p", &["--ports", "4"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "p");
    assert_eq!(v["nat_type"], "port-restricted-cone", "{v:#}");
    assert_eq!(v["mapping"], "endpoint-independent");
    assert_eq!(v["filtering"], "address-and-port-dependent");
    assert_eq!(v["port_preservation"], true);
    assert_eq!(v["hairpinning"], false);
    assert_eq!(v["port_allocation"]["pattern"], "preserving");
    assert_eq!(test_named(&v, "filtering-2")["result"]["outcome"], "timeout");
    assert_eq!(test_named(&v, "filtering-3")["result"]["outcome"], "timeout");
}

#[test]
fn symmetric_lab_is_symmetric_with_random_ports() {
    let (lab, _ct) = lab_with_server(&[("s", NatKind::Symmetric, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "s", &["--ports", "6"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_common(&v, &lab, "s");
    assert_eq!(v["nat_type"], "symmetric", "{v:#}");
    assert_eq!(v["mapping"], "address-and-port-dependent");
    assert_eq!(v["filtering"], "address-and-port-dependent");
    assert_eq!(public_ip(&v), lab.nat("s").public_ip.to_string());
    assert_eq!(v["port_preservation"], false);
    assert_eq!(v["hairpinning"], false);
    assert_eq!(v["port_allocation"]["pattern"], "random");
    assert_ne!(test_named(&v, "mapping-2")["result"]["mapped"], v["public"]);
    assert_eq!(test_named(&v, "mapping-3")["result"]["outcome"], "answered");
}

#[test]
fn udp_blocked_lab_is_udp_blocked_after_the_timeout() {
    let (lab, _ct) = lab_with_server(&[("u", NatKind::UdpBlocked, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "u", &["--timeout", "1"]);
    assert_eq!(code, Some(1), "udp-blocked is a failed check: {v:#}");
    assert_eq!(v["nat_type"], "udp-blocked", "{v:#}");
    for field in ["mapping", "filtering", "hairpinning", "port_preservation", "public", "rtt_ms", "lifetime_s"] {
        assert!(v[field].is_null(), "{field} should be null: {v:#}");
    }
    assert_eq!(test_named(&v, "mapping-1")["result"]["outcome"], "timeout");
    assert!(v["notes"].to_string().contains("no answer over UDP"), "{v:#}");
    assert_eq!(v["p2p"]["difficulty"], "relay-only", "{v:#}");
    assert!(v["p2p"]["peers"].as_array().expect("peers").iter().all(|p| p["how"] == "relay" && p["direct"] == false));
}

#[test]
fn hairpinning_is_seen_on_a_nat_that_loops_back_and_not_on_one_that_does_not() {
    let (lab, _ct) = lab_with_server(
        &[
            ("hp", NatKind::FullCone, Hairpin::On),
            ("nohp", NatKind::FullCone, Hairpin::Off),
            ("prhp", NatKind::PortRestrictedCone, Hairpin::On),
        ],
        &[],
    );
    for (nat, expected) in [("hp", true), ("nohp", false), ("prhp", true)] {
        let (code, v) = nat_type(&lab, nat, &[]);
        assert_eq!(code, Some(0), "{v:#}");
        assert_common(&v, &lab, nat);
        assert_eq!(v["hairpinning"], expected, "{nat}: {v:#}");
        let h = test_named(&v, "hairpin");
        assert_eq!(h["destination"], v["public"]);
        assert_eq!(h["result"]["outcome"], if expected { "hairpinned" } else { "unreachable" }, "{nat}: {h:#}");
    }
}

#[test]
fn servers_without_rfc5780_give_the_mapping_by_comparison_or_say_what_is_missing() {
    let (lab, _ct) = lab_with_server(
        &[("s", NatKind::Symmetric, Hairpin::Off), ("p", NatKind::PortRestrictedCone, Hairpin::Off)],
        &["--no-rfc5780"],
    );
    let two = ["nat-type", "--server", "203.0.113.1:3478", "--server", "203.0.113.2:3478", "--json"];
    let out = lab.natkit_in(&lab.client_ns("s"), &two);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "symmetric", "{v:#}");
    assert_eq!(v["mapping"], "address-dependent");
    assert!(v["filtering"].is_null());
    assert_eq!(v["server"]["rfc5780"], false);
    assert_eq!(v["server"]["others"][0], "203.0.113.2:3478");
    assert!(v["notes"].to_string().contains("filtering is unknown"), "{v:#}");

    let out = lab.natkit_in(&lab.client_ns("p"), &two);
    let v = json_of(&out);
    assert_eq!(v["mapping"], "endpoint-independent");
    assert!(v["nat_type"].is_null(), "which cone needs the filtering tests: {v:#}");
    assert_eq!(out.status.code(), Some(1));

    let out = lab.natkit_in(&lab.client_ns("p"), &["nat-type", "--server", "203.0.113.1:3478"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("does not support RFC 5780"), "{text}");
    assert!(text.contains("second --server"), "{text}");
    assert!(text.contains(&lab.nat("p").public_ip.to_string()), "the public address is still learned: {text}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    for args in [
        &["nat-type", "--server", "203.0.113.1:99999"][..],
        &["nat-type", "--server", "bad host!"],
        &["nat-type", "--server", "turns:203.0.113.1"],
        &["nat-type", "--server", "203.0.113.1", "--timeout", "0"],
        &["nat-type", "--server", "203.0.113.1", "--local", "nonsense"],
        &["nat-type", "--server", "203.0.113.1", "--ports", "999"],
    ] {
        let out = natkit(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn binding_lifetime_is_bracketed_around_the_routers_udp_timeout() {
    let lab = Lab::builder().udp_timeout(3).nat("p", NatKind::PortRestrictedCone).build();
    let _ct = Coturn::start(CoturnConfig::rfc5780_in(&lab.public_ns(), "203.0.113.1", "203.0.113.2"));
    let (code, v) = nat_type(&lab, "p", &["--lifetime", "--timeout", "15"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "port-restricted-cone", "{v:#}");
    let alive = v["lifetime"]["alive_s"].as_f64().expect("alive_s");
    let dead = v["lifetime"]["dead_s"].as_f64().expect("dead_s");
    assert!(alive < 3.1 && dead > 2.9 && dead - alive <= 1.0, "conntrack forgets after 3 s: {v:#}");
    let l = v["lifetime_s"].as_f64().expect("lifetime_s");
    assert!((alive..=dead).contains(&l), "{v:#}");
}

// ---- Port mapping (UPnP-IGD, NAT-PMP, PCP) on the default gateway ----

use common::miniupnpd::MiniUpnpd;

/// A lab whose router runs miniupnpd (started after coturn: it learns its address by STUN).
fn lab_with_miniupnpd(kind: NatKind) -> (Lab, Coturn, MiniUpnpd) {
    let (lab, ct) = lab_with_server(&[("m", kind, Hairpin::Off)], &[]);
    let upnp = MiniUpnpd::start(&lab, "m", "203.0.113.1", 3478);
    assert_eq!(upnp.rules(), "", "a fresh miniupnpd holds no mapping");
    // The "holds no mapping" check sees a mapping when there is one (made with miniupnpc's upnpc;
    // -i: it treats the documentation address as reserved otherwise).
    let upnpc = common::tools::require("upnpc", "miniupnpc");
    let ns = lab.client_ns("m");
    let add = lab.run_in(&ns, &upnpc, &["-i", "-a", "10.1.0.2", "41000", "41000", "UDP", "60"]);
    assert!(upnp.rules().contains("41000"), "upnpc's mapping is not seen:\n{}", String::from_utf8_lossy(&add.stdout));
    lab.run_in(&ns, &upnpc, &["-i", "-d", "41000", "UDP"]);
    assert_eq!(upnp.rules(), "", "upnpc's mapping was not deleted");
    (lab, ct, upnp)
}

/// Every protocol answered, claimed the router's WAN address, mapped a fresh UDP port on it and
/// deleted it; miniupnpd holds nothing afterwards.
fn assert_all_three_mapped_and_deleted(v: &Value, lab: &Lab, upnp: &MiniUpnpd) {
    let wan = lab.nat("m").public_ip.to_string();
    let pm = &v["port_mapping"];
    assert_eq!(pm["gateway"], "10.1.0.1", "{v:#}");
    for proto in ["upnp", "nat_pmp", "pcp"] {
        let p = &pm[proto];
        assert_eq!(p["available"], true, "{proto}: {v:#}\n{}", upnp.log());
        assert_eq!(p["external_ip"], wan.as_str(), "{proto}: {v:#}");
        let mapped: std::net::SocketAddr =
            p["mapped"].as_str().unwrap_or_else(|| panic!("{proto} mapped: {v:#}")).parse().expect("mapped addr");
        assert_eq!(mapped.ip().to_string(), wan, "{proto}: {v:#}");
        assert!(mapped.port() >= 1024, "{proto}: {v:#}");
        assert!(p["lifetime_s"].as_u64().is_some_and(|l| l > 0), "{proto}: {v:#}");
        assert_eq!(p["deleted"], true, "{proto}: {v:#}");
        assert!(p["error"].is_null(), "{proto}: {v:#}");
    }
    // Three fresh ports, one per protocol.
    let ports: std::collections::HashSet<_> =
        ["upnp", "nat_pmp", "pcp"].iter().map(|p| pm[*p]["mapped"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(ports.len(), 3, "{v:#}");
    // The router holds the public address the STUN server saw: no NAT beyond it.
    assert_eq!(v["double_nat"], false, "{v:#}");
    assert_eq!(v["cgnat"], false, "{v:#}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("no double NAT: the router's external address (UPnP-IGD) 203.0.113.11"), "{v:#}");
    assert_eq!(upnp.rules(), "", "miniupnpd still holds a mapping after nat-type:\n{}", upnp.log());
}

#[test]
fn port_mapping_on_a_miniupnpd_router_maps_and_deletes_with_all_three_protocols() {
    let (lab, _ct, upnp) = lab_with_miniupnpd(NatKind::PortRestrictedCone);
    let (code, v) = nat_type(&lab, "m", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "port-restricted-cone", "{v:#}");
    assert_all_three_mapped_and_deleted(&v, &lab, &upnp);
    // The table view says the same, in words.
    let out = lab.natkit_in(&lab.client_ns("m"), &["nat-type", "--server", SERVER]);
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["UPnP-IGD", "NAT-PMP", "PCP"] {
        assert!(text.lines().any(|l| l.contains(row) && l.contains("deleted")), "no {row} row:\n{text}");
    }
    assert_eq!(upnp.rules(), "", "after the table run:\n{}", upnp.log());
}

#[test]
fn port_mapping_on_a_symmetric_miniupnpd_router_maps_and_deletes() {
    let (lab, _ct, upnp) = lab_with_miniupnpd(NatKind::Symmetric);
    let (code, v) = nat_type(&lab, "m", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "symmetric", "{v:#}");
    assert_all_three_mapped_and_deleted(&v, &lab, &upnp);
    // A mapped port is reachable by anyone: even symmetric peers get a direct path.
    assert_eq!(v["p2p"]["difficulty"], "easy", "{v:#}");
    assert_eq!(p2p_how(&v, "symmetric"), ("port-mapping", true), "{v:#}");
    assert_eq!(p2p_how(&v, "open"), ("direct", true), "{v:#}");
}

/// (how, direct) of one kind of peer in `p2p.peers`.
fn p2p_how<'a>(v: &'a Value, peer: &str) -> (&'a str, bool) {
    let p = v["p2p"]["peers"]
        .as_array()
        .expect("p2p.peers")
        .iter()
        .find(|p| p["peer"] == peer)
        .unwrap_or_else(|| panic!("no p2p peer {peer}: {v:#}"));
    (p["how"].as_str().expect("how"), p["direct"].as_bool().expect("direct"))
}

#[test]
fn router_without_port_mapping_says_none_answered_and_no_port_mapping_skips_it() {
    let (lab, _ct) = lab_with_server(&[("n", NatKind::PortRestrictedCone, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "n", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    let pm = &v["port_mapping"];
    assert_eq!(pm["gateway"], "10.1.0.1", "{v:#}");
    for proto in ["upnp", "nat_pmp", "pcp"] {
        let p = &pm[proto];
        assert_eq!(p["available"], false, "{proto}: {v:#}");
        assert!(p["external_ip"].is_null() && p["mapped"].is_null() && p["deleted"].is_null(), "{proto}: {v:#}");
        assert!(p["error"].as_str().is_some_and(|e| !e.is_empty()), "{proto}: {v:#}");
    }
    // NAT-PMP and PCP get the router's port unreachable; UPnP's SSDP search goes unanswered.
    assert!(pm["nat_pmp"]["error"].as_str().is_some_and(|e| e.contains("port unreachable")), "{v:#}");
    assert!(pm["upnp"]["error"].as_str().is_some_and(|e| e.contains("no answer")), "{v:#}");
    // No router told its external address: CGNAT and double NAT stay unknown, and the notes say why.
    assert!(v["cgnat"].is_null() && v["double_nat"].is_null(), "{v:#}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("double_nat unknown") && notes.contains("cgnat unknown"), "{v:#}");

    let (code, v) = nat_type(&lab, "n", &["--no-port-mapping"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(v["port_mapping"].is_null(), "{v:#}");
}

#[test]
fn open_host_with_the_server_on_link_asks_no_router() {
    let (lab, _ct) = lab_with_server(&[("o", NatKind::Open, Hairpin::Off)], &[]);
    let (code, v) = nat_type(&lab, "o", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(v["port_mapping"]["gateway"].is_null(), "{v:#}");
    assert!(
        v["port_mapping"]["pcp"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no IPv4 router on the path to 203.0.113.1:3478")),
        "{v:#}"
    ); // The server saw this host's own address: no NAT at all.
    assert_eq!((v["cgnat"].as_bool(), v["double_nat"].as_bool()), (Some(false), Some(false)), "{v:#}");
    assert!(v["notes"].to_string().contains("the STUN server saw this host's own address"), "{v:#}");
}

/// Attack: a device answering SSDP as the gateway points LOCATION at another host (here a
/// listener on the public side). natkit must not follow it: no connection is made there.
#[test]
fn upnp_answer_pointing_off_the_gateway_is_not_followed() {
    let (lab, _ct) = lab_with_server(&[("h", NatKind::PortRestrictedCone, Hairpin::Off)], &[]);
    let python = common::tools::require("python3", "python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let hits = dir.path().join("hits");
    let listener = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('203.0.113.1',8080))\ns.listen()\nopen('{}','w').close()\n\
while True:\n c,_=s.accept()\n open('{}','a').write('hit\\n')\n c.close()\n",
        hits.display(),
        hits.display()
    );
    let _l = lab.spawn_in(&lab.public_ns(), &python, &["-c", &listener]);
    let responder = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',1900))\n\
while True:\n _,a=s.recvfrom(2048)\n s.sendto(b'HTTP/1.1 200 OK\\r\\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\\r\\n\
LOCATION: http://203.0.113.1:8080/rootDesc.xml\\r\\n\\r\\n',a)\n";
    let router = lab.nat("h").router_ns.clone().expect("router ns");
    let _r = lab.spawn_in(&router, &python, &["-c", responder]);
    let ready = |ns: &str, proto: &str, addr: &str| {
        let out = lab.run_in(ns, "ss", &[&format!("-Hl{proto}n")]);
        String::from_utf8_lossy(&out.stdout).contains(addr)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(hits.exists() && ready(&router, "u", "0.0.0.0:1900") && ready(&lab.public_ns(), "t", "203.0.113.1:8080")) {
        assert!(std::time::Instant::now() < deadline, "the fake SSDP responder or listener did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, v) = nat_type(&lab, "h", &[]);
    assert_eq!(code, Some(0), "{v:#}");
    let upnp = &v["port_mapping"]["upnp"];
    assert!(upnp["error"].as_str().is_some_and(|e| e.contains("not followed")), "{v:#}");
    assert!(upnp["mapped"].is_null(), "{v:#}");
    let got = std::fs::read_to_string(&hits).unwrap_or_default();
    assert_eq!(got, "", "natkit connected to the host the fake LOCATION named");
}

// ---- IPv6 beside IPv4 (dual-stack lab: v6 open, stateful v6 firewall, NAT66) ----

use common::lab::V6Kind;

const SERVER6: &str = "[2001:db8::10]:3478";
const OTHER6: &str = "[2001:db8::11]:3479";

/// `natkit relay` as the IPv6 RFC 5780 server (two v6 IPs, alternate port 3479) in the public namespace.
fn relay6(lab: &Lab) -> common::lab::LabChild {
    let child = lab.spawn_in(
        &lab.public_ns(),
        env!("CARGO_BIN_EXE_natkit"),
        &["relay", "--listen", SERVER6, "--alt-ip", "2001:db8::11"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ns = lab.public_ns();
    while !(lab.udp_listening(&ns, "[2001:db8::10]", 3478) && lab.udp_listening(&ns, "[2001:db8::11]", 3479)) {
        assert!(std::time::Instant::now() < deadline, "natkit relay did not listen on {SERVER6} and {OTHER6}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// nat-type with a v4 and a v6 server, every client at once (each run is independent).
fn nat_type_dual(lab: &Lab, clients: &[&str]) -> Vec<(Option<i32>, Value)> {
    std::thread::scope(|s| {
        let runs: Vec<_> = clients
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let out = lab.natkit_in(
                        &lab.client_ns(c),
                        &["nat-type", "--server", SERVER, "--server", SERVER6, "--json", "--no-port-mapping"],
                    );
                    (out.status.code(), json_of(&out))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("nat-type thread")).collect()
    })
}

fn assert_v6_common(v: &Value, lab: &Lab, client: &str) {
    let v6 = &v["ipv6"];
    assert_eq!(v6["route"], true, "{v:#}");
    assert_eq!(v6["answer"], true, "{v:#}");
    let local: std::net::SocketAddr = v6["local"].as_str().expect("ipv6.local").parse().expect("v6 local");
    assert_eq!(Some(local.ip()), lab.client_ip6(client).map(std::net::IpAddr::V6), "{v:#}");
    let public: std::net::SocketAddr = v6["public"].as_str().expect("ipv6.public").parse().expect("v6 public");
    assert_eq!(Some(public.ip()), lab.nat6(client).map(|n| std::net::IpAddr::V6(n.public_ip)), "{v:#}");
    assert_eq!(v6["server"]["address"], SERVER6, "{v:#}");
    assert_eq!(v6["server"]["other_address"], OTHER6, "{v:#}");
    assert_eq!(v6["server"]["rfc5780"], true, "{v:#}");
    assert!(v6["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0), "{v:#}");
    assert_eq!(v6["mapping"], "endpoint-independent", "{v:#}");
    let tests = v6["tests"].as_array().expect("ipv6.tests");
    assert!(tests.iter().any(|t| t["test"] == "filtering-2" && t["destination"] == SERVER6), "{v:#}");
    // The v4 half is untouched by the v6 one: its tests never name a v6 address.
    assert_eq!(v["server"]["address"], SERVER, "{v:#}");
    assert!(
        v["tests"].as_array().expect("tests").iter().all(|t| !t["destination"].as_str().unwrap_or("[").contains('['))
    );
    assert_eq!(v["nat_type"], lab.nat(client).kind.as_str(), "{v:#}");
}

#[test]
fn ipv6_is_classified_beside_ipv4_open_firewalled_and_nat66() {
    let lab = Lab::builder()
        .nat("o", NatKind::Symmetric)
        .v6("o", V6Kind::Open)
        .nat("w", NatKind::Symmetric)
        .v6("w", V6Kind::Firewall)
        .nat("n", NatKind::PortRestrictedCone)
        .v6("n", V6Kind::Nat66)
        .build();
    let _ct = Coturn::start(CoturnConfig::rfc5780_in(&lab.public_ns(), "203.0.113.1", "203.0.113.2"));
    let _relay = relay6(&lab);
    let runs = nat_type_dual(&lab, &["o", "w", "n"]);

    let (code, v) = &runs[0];
    assert_eq!(*code, Some(0), "{v:#}");
    assert_v6_common(v, &lab, "o");
    assert_eq!(v["ipv6"]["nat_type"], "open-internet", "{v:#}");
    assert_eq!(v["ipv6"]["filtering"], "endpoint-independent", "{v:#}");
    assert_eq!(v["ipv6"]["public"], v["ipv6"]["local"], "{v:#}");
    assert_eq!(v["ipv6"]["hairpinning"], true, "a host reaches its own address: {v:#}");
    // Symmetric v4 without port mapping: hard, but IPv6 peers reach it directly.
    assert_eq!(v["p2p"]["difficulty"], "hard", "{v:#}");
    assert_eq!(p2p_how(v, "symmetric"), ("relay", false), "{v:#}");
    assert_eq!(p2p_how(v, "port-restricted"), ("birthday", true), "{v:#}");
    assert_eq!(p2p_how(v, "ipv6"), ("direct", true), "{v:#}");

    let (code, v) = &runs[1];
    assert_eq!(*code, Some(0), "{v:#}");
    assert_v6_common(v, &lab, "w");
    assert_eq!(v["ipv6"]["nat_type"], "symmetric-udp-firewall", "{v:#}");
    assert_eq!(v["ipv6"]["filtering"], "address-and-port-dependent", "{v:#}");
    assert_eq!(v["ipv6"]["public"], v["ipv6"]["local"], "{v:#}");
    assert_eq!(p2p_how(v, "ipv6"), ("hole-punching", true), "{v:#}");
    assert_eq!(v["p2p"]["sentences"].as_array().map(|s| s.len()), Some(2), "{v:#}");

    let (code, v) = &runs[2];
    assert_eq!(*code, Some(0), "{v:#}");
    assert_v6_common(v, &lab, "n");
    assert_eq!(v["ipv6"]["nat_type"], "port-restricted-cone", "NAT66: {v:#}");
    assert_eq!(v["ipv6"]["filtering"], "address-and-port-dependent", "{v:#}");
    assert_eq!(v["ipv6"]["hairpinning"], false, "{v:#}");
    assert_ne!(v["ipv6"]["public"], v["ipv6"]["local"], "{v:#}");
    assert_eq!(v["p2p"]["difficulty"], "medium", "{v:#}");
    assert_eq!(p2p_how(v, "symmetric"), ("birthday", true), "{v:#}");
    assert_eq!(p2p_how(v, "full-cone"), ("hole-punching", true), "{v:#}");
    assert_eq!(p2p_how(v, "ipv6"), ("hole-punching", true), "NAT66 port-restricted: {v:#}");

    // The table view has the IPv6 rows.
    let out =
        lab.natkit_in(&lab.client_ns("w"), &["nat-type", "--server", SERVER, "--server", SERVER6, "--no-port-mapping"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("IPv6") && l.contains("symmetric-udp-firewall")), "{text}");
    // It ends with the plain sentences: the verdict's meaning, IPv4 peers, IPv6.
    let last: Vec<&str> = text.lines().rev().take(2).collect();
    assert!(last[1].starts_with("Peer-to-peer is hard from here (IPv4)"), "{text}");
    assert!(last[1].contains("symmetric NAT peers only through a relay"), "{text}");
    assert!(last[0].starts_with("Over IPv6 (symmetric-udp-firewall) hole punching reaches"), "{text}");
}

#[test]
fn no_ipv6_route_is_one_line_and_no_packet() {
    // Client "4" has no v6 at all; the public side does (the server is there).
    let lab =
        Lab::builder().nat("s", NatKind::PortRestrictedCone).v6("s", V6Kind::Open).nat("x", NatKind::Symmetric).build();
    let _ct = Coturn::start(CoturnConfig::rfc5780_in(&lab.public_ns(), "203.0.113.1", "203.0.113.2"));
    let _relay = relay6(&lab);
    let (code, v) = nat_type_dual(&lab, &["x"]).remove(0);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "symmetric", "{v:#}");
    let v6 = &v["ipv6"];
    assert_eq!(v6["route"], false, "{v:#}");
    assert_eq!(v6["answer"], false, "{v:#}");
    assert_eq!(v6["tests"].as_array().map(|t| t.len()), Some(0), "no v6 packet is sent: {v:#}");
    assert!(v6["nat_type"].is_null() && v6["public"].is_null() && v6["server"].is_null(), "{v:#}");
    let notes = v6["notes"].as_array().expect("ipv6.notes");
    assert_eq!(notes.len(), 1, "{v:#}");
    assert!(notes[0].as_str().is_some_and(|n| n.contains("no IPv6 route to [2001:db8::10]:3478")), "{v:#}");
    assert_eq!(p2p_how(&v, "ipv6"), ("relay", false), "{v:#}");

    // Only a v4 server: no v6 server to test against, said in one line.
    let (_, v) = nat_type(&lab, "s", &["--no-port-mapping"]);
    assert!(v["ipv6"]["route"].is_null() && v["ipv6"]["answer"] == false, "{v:#}");
    assert!(v["ipv6"]["notes"][0].as_str().is_some_and(|n| n.contains("no server has an IPv6 address")), "{v:#}");

    // Only a v6 server: the top level is the v6 run (as before), and `ipv6` says the same.
    let out = lab.natkit_in(&lab.client_ns("s"), &["nat-type", "--server", SERVER6, "--json", "--no-port-mapping"]);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "open-internet", "{v:#}");
    assert_eq!(v["ipv6"]["nat_type"], "open-internet", "{v:#}");
    assert_eq!(v["ipv6"]["public"], v["public"], "{v:#}");
}

// ---- A classic RFC 3489 server (stund): CHANGED-ADDRESS instead of OTHER-ADDRESS ----

/// Debian's stund (stun-server) on the lab's two public IPs, ports 3478 and 3479.
fn stund(lab: &Lab) -> common::lab::LabChild {
    let bin = common::tools::require("stund", "stun-server");
    let child = lab.spawn_in(&lab.public_ns(), bin, &["-h", "203.0.113.1", "-a", "203.0.113.2"]);
    let ns = lab.public_ns();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !["203.0.113.1", "203.0.113.2"]
        .iter()
        .all(|ip| lab.udp_listening(&ns, ip, 3478) && lab.udp_listening(&ns, ip, 3479))
    {
        assert!(std::time::Instant::now() < deadline, "stund did not listen on 203.0.113.1-2:3478-3479");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn classic_rfc3489_server_serves_the_mapping_and_filtering_tests_through_changed_address() {
    let lab = Lab::builder()
        .nat("r", NatKind::RestrictedCone)
        .nat("s", NatKind::Symmetric)
        .nat("p", NatKind::PortRestrictedCone)
        .build();
    let _stund = stund(&lab);
    for (client, name, mapping, filtering) in [
        ("r", "restricted-cone", "endpoint-independent", "address-dependent"),
        ("s", "symmetric", "address-and-port-dependent", "address-and-port-dependent"),
        ("p", "port-restricted-cone", "endpoint-independent", "address-and-port-dependent"),
    ] {
        let (code, v) = nat_type(&lab, client, &["--no-port-mapping"]);
        assert_eq!(code, Some(0), "{client}: {v:#}");
        assert_eq!(v["nat_type"], name, "{client}: {v:#}");
        assert_eq!(v["mapping"], mapping, "{client}: {v:#}");
        assert_eq!(v["filtering"], filtering, "{client}: {v:#}");
        assert_eq!(v["server"]["rfc5780"], false, "{v:#}");
        assert_eq!(v["server"]["rfc3489"], true, "{v:#}");
        assert_eq!(v["server"]["other_address"], OTHER, "stund's CHANGED-ADDRESS: {v:#}");
        let m1 = test_named(&v, "mapping-1");
        assert!(m1["result"]["other_address"].is_null(), "stund sends no OTHER-ADDRESS: {v:#}");
        assert_eq!(m1["result"]["changed_address"], OTHER, "{v:#}");
        assert_eq!(test_named(&v, "mapping-2")["result"]["from"], "203.0.113.2:3478", "{v:#}");
        assert!(
            v["notes"]
                .as_array()
                .expect("notes")
                .iter()
                .any(|n| n.as_str().is_some_and(|n| n.contains("CHANGED-ADDRESS 203.0.113.2:3479 (RFC 3489)"))),
            "{v:#}"
        );
    }
    let (_, v) = nat_type(&lab, "r", &["--no-port-mapping"]);
    assert_eq!(test_named(&v, "filtering-3")["result"]["from"], "203.0.113.1:3479", "{v:#}");
}

// ---- --every: one line per run with what changed; Ctrl-C ends cleanly ----

#[test]
fn every_prints_a_json_line_per_run_with_what_changed_and_ctrl_c_leaves_nothing_on_the_router() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let (lab, _ct, upnp) = lab_with_miniupnpd(NatKind::PortRestrictedCone);
    let mut child = lab
        .command_in(
            &lab.client_ns("m"),
            env!("CARGO_BIN_EXE_natkit"),
            &["nat-type", "--server", SERVER, "--every", "1", "--json"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting nat-type --every");
    // On a panic the lab's Drop ends it with everything else in its namespaces.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || -> Value {
        let line = rx.recv_timeout(Duration::from_secs(15)).expect("a JSON line within 15 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
    };

    let first = next_line();
    assert_eq!(first["run"], 1, "{first:#}");
    assert_eq!(first["changes"].as_array().map(|c| c.len()), Some(0), "{first:#}");
    assert_eq!(first["report"]["nat_type"], "port-restricted-cone", "{first:#}");
    assert_all_three_mapped_and_deleted(&first["report"], &lab, &upnp);

    // The router turns symmetric between runs: a later line says so, and only that changes
    // (the public IP, port mapping and everything else stay).
    let router = lab.nat("m").router_ns.clone().expect("router");
    let ins = lab.run_in(
        &router,
        "nft",
        &[
            "insert",
            "rule",
            "ip",
            "lab",
            "post",
            "oifname",
            "wan",
            "ip",
            "saddr",
            "10.1.0.0/24",
            "masquerade",
            "fully-random",
        ],
    );
    assert!(ins.status.success(), "{}", String::from_utf8_lossy(&ins.stderr));
    let mut changed = None;
    for _ in 0..3 {
        let v = next_line();
        let ch = v["changes"].as_array().expect("changes").clone();
        if !ch.is_empty() {
            changed = Some((v, ch));
            break;
        }
    }
    let (v, ch) = changed.expect("a run after the change reports it");
    assert!(v["run"].as_u64().is_some_and(|r| r >= 2), "{v:#}");
    assert_eq!(v["report"]["nat_type"], "symmetric", "{v:#}");
    let nat = ch.iter().find(|c| c["field"] == "nat_type").unwrap_or_else(|| panic!("{ch:?}"));
    assert_eq!((nat["from"].as_str(), nat["to"].as_str()), (Some("port-restricted-cone"), Some("symmetric")));
    assert!(ch.iter().all(|c| c["field"] != "public_ip" && c["field"] != "port_mapping"), "{ch:?}");

    // Ctrl-C ends it, exit 0, and miniupnpd holds nothing afterwards.
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "nat-type --every did not end within 10 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "Ctrl-C is how --every ends");
    assert_eq!(upnp.rules(), "", "miniupnpd still holds a mapping after Ctrl-C:\n{}", upnp.log());
}

// ---- natkit's own relay as the RFC 5780 server: RESPONSE-PORT (§7.5) ----

#[test]
fn binding_lifetime_is_bracketed_around_the_routers_udp_timeout_against_natkit_relay() {
    let lab = Lab::builder().udp_timeout(3).nat("p", NatKind::PortRestrictedCone).build();
    let ns = lab.public_ns();
    let _relay = lab.spawn_in(
        &ns,
        env!("CARGO_BIN_EXE_natkit"),
        &["relay", "--listen", SERVER, "--alt-ip", "203.0.113.2", "--metrics", "203.0.113.1:9641"],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(lab.udp_listening(&ns, "203.0.113.1", 3478) && lab.udp_listening(&ns, "203.0.113.2", 3479)) {
        assert!(std::time::Instant::now() < deadline, "natkit relay did not listen on {SERVER} and {OTHER}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, v) = nat_type(&lab, "p", &["--lifetime", "--timeout", "15"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["nat_type"], "port-restricted-cone", "{v:#}");
    assert_eq!(v["server"]["other_address"], OTHER, "{v:#}");
    let alive = v["lifetime"]["alive_s"].as_f64().expect("alive_s: natkit relay honoured RESPONSE-PORT");
    let dead = v["lifetime"]["dead_s"].as_f64().expect("dead_s");
    assert!(alive < 3.1 && dead > 2.9 && dead - alive <= 1.0, "conntrack forgets after 3 s: {v:#}");
    let l = v["lifetime_s"].as_f64().expect("lifetime_s");
    assert!((alive..=dead).contains(&l), "{v:#}");
    // The relay counted the answers it sent to another port (its metrics, read inside the namespace).
    let out = lab.run_in(
        &ns,
        common::tools::require("curl", "curl"),
        &["-s", "--max-time", "5", "http://203.0.113.1:9641/metrics"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("natkit_relay_binding_response_port_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no natkit_relay_binding_response_port_total in {text}"));
    assert!(sent >= 2, "{sent} RESPONSE-PORT answers for a bracketed lifetime");
}
