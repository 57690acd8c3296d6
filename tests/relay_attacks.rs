//! `natkit relay` attacked the way the internet attacks a TURN server (issue
//! #13): each test is one break, reproduced against the real binary on
//! loopback (127.0.0.x) or inside a network namespace the test made, with
//! figures asserted as counts, never as times.

mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/turn_udp.rs"]
mod turn_udp;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime};

use common::json_of;
use common::relay::Relay;
use netns::Netns;
use stun_rs::MessageClass;
use stun_rs::methods::ALLOCATE;
use turn_udp::{
    Allocated, Client, allocate, any_success, channel_data, code, request, request_with_fingerprint, send_indication,
    udp,
};

fn server(relay: &Relay) -> SocketAddr {
    relay.addr().parse().expect("relay address")
}

/// Sends every request in `reqs` from `c`, paced so the relay's socket buffer keeps up,
/// and returns every answer that came back.
fn blast(c: &Client, reqs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        c.sock.send_to(r, c.server).expect("send");
        if i % 50 == 49 {
            answers.extend(c.drain(Duration::from_millis(2)));
        }
    }
    answers.extend(c.drain(Duration::from_millis(300)));
    answers
}

#[test]
fn ten_thousand_password_guesses_from_one_address_are_mostly_refused_unchecked() {
    // The password is 7352: the guess that found it in the break, late in the run.
    let mut relay = Relay::start(&["--user", "alice:7352", "--user", "bob:builder", "--realm", "lab", "--json"]);
    let attacker = Client::bind("127.0.0.1", server(&relay));
    let nonce = attacker.nonce();
    let guesses: Vec<Vec<u8>> =
        (0..10_000).map(|i| request(ALLOCATE, vec![udp()], Some(("alice", &format!("{i:04}"), &nonce)))).collect();
    let answers = blast(&attacker, &guesses);
    assert!(!any_success(&answers), "a guess was accepted: the right password got through the throttle");

    // Another address, another user: not locked out.
    let bob = Client::bind("127.0.0.2", server(&relay));
    assert_eq!(allocate(&bob, "bob", "builder").class(), MessageClass::SuccessResponse);
    // The owner of the guessed username, from another address: in after the username's short lock.
    let alice = Client::bind("127.0.0.3", server(&relay));
    let nonce = alice.nonce();
    let m = alice.transact_tries(&request(ALLOCATE, vec![udp()], Some(("alice", "7352", &nonce))), 12);
    assert_eq!(m.map(|m| m.class()), Some(MessageClass::SuccessResponse), "alice is locked out for good");

    let v = json_of(&relay.stop());
    let checked = v["auth_failures"]["bad_integrity"].as_u64().expect("bad_integrity");
    let refused = v["auth_throttled"].as_u64().expect("auth_throttled");
    eprintln!("10,000 guesses from one address: {checked} checked, {refused} refused unchecked");
    // A burst of 10, then locks of 0.5 s, 1 s, 2 s, ...: a handful more at most.
    assert!(checked <= 20, "{checked} of 10,000 guesses had their integrity checked\n{v}");
    assert!(checked >= 10, "the burst is checked: {v}");
    assert!(refused + checked >= 9_000, "most guesses reached the relay and were refused unchecked: {v}");
    assert_eq!(v["allocations_created"], 2, "{v}");
}

#[test]
fn guesses_for_one_username_from_many_addresses_are_held_to_the_username_limit() {
    let mut relay = Relay::start(&["--user", "alice:7352", "--user", "bob:builder", "--realm", "lab", "--json"]);
    // 40 addresses, 8 guesses each: every address stays under its own burst of 10.
    let attackers: Vec<Client> = (10..50).map(|i| Client::bind(&format!("127.0.0.{i}"), server(&relay))).collect();
    let nonces: Vec<String> = attackers.iter().map(|c| c.nonce()).collect();
    let mut answers = Vec::new();
    for round in 0..8 {
        for (n, (c, nonce)) in attackers.iter().zip(&nonces).enumerate() {
            // The right password comes late, from the 36th address.
            let pass = if round == 7 && n == 35 { "7352".to_string() } else { format!("{:04}", round * 100 + n) };
            c.sock.send_to(&request(ALLOCATE, vec![udp()], Some(("alice", &pass, nonce))), c.server).expect("send");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for c in &attackers {
        answers.extend(c.drain(Duration::from_millis(20)));
    }
    assert!(!any_success(&answers), "the right password got through the username throttle");
    let bob = Client::bind("127.0.0.2", server(&relay));
    assert_eq!(allocate(&bob, "bob", "builder").class(), MessageClass::SuccessResponse);

    let v = json_of(&relay.stop());
    let checked = v["auth_failures"]["bad_integrity"].as_u64().expect("bad_integrity");
    let refused = v["auth_throttled"].as_u64().expect("auth_throttled");
    eprintln!("320 guesses for one username from 40 addresses: {checked} checked, {refused} refused unchecked");
    assert!(checked <= 20, "{checked} of 320 guesses for one username were checked\n{v}");
    assert!(refused >= 280, "{v}");
}

#[test]
fn a_request_with_a_wrong_fingerprint_is_discarded_and_counted() {
    let mut relay = Relay::start(&["--user", "alice:wonderland", "--realm", "lab", "--json"]);
    let c = Client::bind("127.0.0.1", server(&relay));
    let nonce = c.nonce();
    // Valid credentials, FINGERPRINT off by one bit.
    let mut bad = request_with_fingerprint(ALLOCATE, vec![udp()], Some(("alice", "wonderland", &nonce)));
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert!(c.transact_tries(&bad, 2).is_none(), "a request with a wrong FINGERPRINT was answered");
    // The same request with its FINGERPRINT intact is answered (and allocates).
    let good = request_with_fingerprint(ALLOCATE, vec![udp()], Some(("alice", "wonderland", &nonce)));
    let m = c.transact(&good).expect("an answer");
    assert_eq!(m.class(), MessageClass::SuccessResponse, "{m:?}");
    let v = json_of(&relay.stop());
    assert_eq!(v["allocations_created"], 1, "{v}");
    assert_eq!(v["dropped_packets"], 2, "both tries of the bad request are dropped and counted: {v}");
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Waits (bounded) until the relay at `server` answers a Binding request from `local_ip`.
fn wait_answering(local_ip: &str, server: SocketAddr) {
    let c = Client::bind(local_ip, server);
    let req = natkit::stun::message::binding_request(natkit::stun::message::new_transaction_id());
    assert!(c.transact_tries(&req, 20).is_some(), "the relay at {server} did not answer within 10 s");
}

/// Whether `sock` receives anything within 300 ms.
fn receives(sock: &UdpSocket) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

#[test]
fn peers_on_the_relay_host_itself_are_refused_v4_v6_and_behind_external_ip() {
    let ns = Netns::new(&["203.0.113.1/24", "203.0.113.5/32", "2001:db8::1/64", "2001:db8::5/128"]);
    let common = ["--listen", "203.0.113.1:3478", "--listen", "[2001:db8::1]:3478", "--user", "alice:wonderland"];
    let common = [&common[..], &["--realm", "lab", "--external-ip", "198.51.100.77", "--json"]].concat();
    let mut strict = ns.spawn_relay(&common);
    let (v4, v6) = ns.run(|| {
        let server = sa("203.0.113.1:3478");
        wait_answering("203.0.113.5", server);
        // A service of the relay host the relay does not own.
        let service = UdpSocket::bind("203.0.113.1:5555").expect("bind the host service");
        let a = Allocated::new("203.0.113.5", server, "alice", "wonderland", false);
        let v4: Vec<Option<u16>> =
            ["203.0.113.1:5555", "198.51.100.77:3478", "198.51.100.77:22"].iter().map(|p| a.permit(sa(p))).collect();
        // A Send indication needs no answer; it must not reach the service either.
        a.send_raw(&send_indication(sa("203.0.113.1:5555"), b"knock"));
        assert_eq!(receives(&service), None, "a Send indication reached the relay host's service");
        let service6 = UdpSocket::bind("[2001:db8::1]:5555").expect("bind the v6 host service");
        let b = Allocated::new("2001:db8::5", sa("[2001:db8::1]:3478"), "alice", "wonderland", true);
        let v6 = b.permit(sa("[2001:db8::1]:5555"));
        b.send_raw(&send_indication(sa("[2001:db8::1]:5555"), b"knock"));
        assert_eq!(receives(&service6), None, "a Send indication reached the relay host's v6 service");
        (v4, v6)
    });
    assert_eq!(
        v4,
        [Some(403), Some(403), Some(403)],
        "own v4 port, external-ip listening port, external-ip other port"
    );
    assert_eq!(v6, Some(403), "own v6 address");
    let v = json_of(&strict.stop());
    assert!(v["peer_refusals"]["own_host"].as_u64().unwrap_or(0) >= 3, "{v}");
    assert!(v["peer_refusals"]["own_address"].as_u64().unwrap_or(0) >= 1, "{v}");

    // The operator may open the host (not its listening ports): then datagrams do arrive.
    let mut open = ns.spawn_relay(&[&common[..], &["--allow-relay-host-peers"]].concat());
    ns.run(|| {
        let server = sa("203.0.113.1:3478");
        wait_answering("203.0.113.5", server);
        let service = UdpSocket::bind("203.0.113.1:5556").expect("bind the host service");
        let a = Allocated::new("203.0.113.5", server, "alice", "wonderland", false);
        assert_eq!(a.permit(sa("203.0.113.1:5556")), None);
        assert_eq!(a.permit(sa("203.0.113.1:3478")), Some(403), "never the listening port");
        a.send_raw(&send_indication(sa("203.0.113.1:5556"), b"knock"));
        assert_eq!(receives(&service).as_deref(), Some(&b"knock"[..]), "allowed, so it arrives");
    });
    let _ = open.stop();
}

/// The reason phrase of an error answer, as a client's log would show it.
fn reason_of(m: &stun_rs::StunMessage) -> Option<String> {
    m.attributes().iter().find_map(|a| a.as_error_code().ok()).map(|e| e.error_code().reason().to_string())
}

#[test]
fn a_refused_peer_gets_a_403_whose_reason_names_the_flag_that_would_allow_it() {
    // No --allow-*-peers: loopback and private peers are refused.
    let mut relay = Relay::start(&["--user", "alice:wonderland", "--realm", "lab", "--json"]);
    let a = Allocated::new("127.0.0.1", server(&relay), "alice", "wonderland", false);
    let ask = |method, peer: &str| {
        let mut attrs = vec![stun_rs::attributes::turn::XorPeerAddress::from(sa(peer)).into()];
        if method == stun_rs::methods::CHANNEL_BIND {
            attrs.insert(0, stun_rs::attributes::turn::ChannelNumber::new(0x4001).into());
        }
        let req = request(method, attrs, Some((&a.user, &a.pass, &a.nonce)));
        let m = a.client.transact(&req).expect("an answer");
        (code(&m), reason_of(&m))
    };
    let (loopback, why) = ask(stun_rs::methods::CREATE_PERMMISSION, "127.0.0.1:9");
    assert_eq!(loopback, Some(403));
    let why = why.unwrap_or_default();
    assert!(why.contains("loopback") && why.contains("--allow-loopback-peers"), "reason phrase: {why:?}");
    let (private, why) = ask(stun_rs::methods::CHANNEL_BIND, "10.1.2.3:9");
    assert_eq!(private, Some(403));
    let why = why.unwrap_or_default();
    assert!(why.contains("private") && why.contains("--allow-private-peers"), "reason phrase: {why:?}");
    let v = json_of(&relay.stop());
    assert_eq!(v["peer_refusals"]["loopback"].as_u64(), Some(1), "{v}");
    assert_eq!(v["peer_refusals"]["private"].as_u64(), Some(1), "{v}");
}

#[test]
fn a_channel_to_a_freed_relayed_port_stops_delivering() {
    // --allow-loopback-peers: only the relay's own bookkeeping can stop this, not the loopback class.
    let mut relay = Relay::start(&["--user", "alice:wonderland", "--realm", "lab", "--allow-loopback-peers", "--json"]);
    let a = Allocated::new("127.0.0.1", server(&relay), "alice", "wonderland", false);
    let b = Allocated::new("127.0.0.2", server(&relay), "alice", "wonderland", false);
    assert_eq!(b.permit(a.relayed), None);
    assert_eq!(a.bind_channel(0x4000, b.relayed), None, "a channel to another allocation of this relay");
    a.send_raw(&channel_data(0x4000, b"to b"));
    let got = b.client.drain(Duration::from_millis(300));
    assert!(got.iter().any(|d| d.windows(4).any(|w| w == b"to b")), "allocation to allocation works: {got:?}");

    assert_eq!(b.delete(), None);
    // Another process takes the freed port (bounded wait for the relay to close it).
    let mut squatter = None;
    for _ in 0..100 {
        if let Ok(s) = UdpSocket::bind(b.relayed) {
            squatter = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let squatter = squatter.expect("the freed relayed port was never released");
    for _ in 0..3 {
        a.send_raw(&channel_data(0x4000, b"to whoever"));
        a.send_raw(&send_indication(b.relayed, b"to whoever"));
    }
    assert_eq!(receives(&squatter), None, "ChannelData or Send reached the process that took the freed port");
    // New permissions and channels to it are refused too.
    assert_eq!(a.permit(b.relayed), Some(403));
    let v = json_of(&relay.stop());
    assert!(v["peer_refusals"]["own_address"].as_u64().unwrap_or(0) >= 7, "{v}");
}

#[test]
fn unauthenticated_answers_are_small_and_a_flood_from_one_address_gets_fewer_bytes_than_it_sends() {
    // A quarter of the default budget, so the bound holds with room however slowly the flood goes out.
    let budget = ["--unauth-burst", "16384", "--unauth-rate", "4096"];
    let mut relay = Relay::start(&[&["--user", "alice:wonderland", "--realm", "lab", "--json"][..], &budget].concat());
    let attacker = Client::bind("127.0.0.1", server(&relay));
    // A bare Allocate: the 20-byte header alone.
    let bare = || {
        let mut m = request(ALLOCATE, vec![], None);
        m.truncate(20);
        m[2..4].copy_from_slice(&[0, 0]);
        m
    };
    let first = bare();
    let challenge = attacker.transact(&first).expect("a 401 challenge");
    assert_eq!(turn_udp::code(&challenge), Some(401));
    let size = natkit::stun::message::encode(&challenge).len();
    // coturn 4.6.1 answers the same 20 bytes with 92 (x4.6).
    assert!(size <= 92, "a single 401 challenge of {size} bytes is larger than coturn's 92");

    // 5,000 bare Allocates and 5,000 Binding requests from one (spoofable) address.
    let mut flood: Vec<Vec<u8>> = (0..5_000).map(|_| bare()).collect();
    flood.extend(
        (0..5_000).map(|_| natkit::stun::message::binding_request(natkit::stun::message::new_transaction_id())),
    );
    let bytes_in: usize = flood.iter().map(|m| m.len()).sum();
    let answers = blast(&attacker, &flood);
    let bytes_out: usize = answers.iter().map(|a| a.len()).sum();
    assert!(answers.len() >= 10, "the burst is answered: {} answers", answers.len());
    eprintln!("flood from one address: {bytes_in} bytes in, {bytes_out} out; one 401 challenge {size} bytes");
    assert!(bytes_out <= bytes_in, "amplification: {bytes_out} bytes out for {bytes_in} in");

    // Another address is answered at once.
    let other = Client::bind("127.0.0.2", server(&relay));
    assert!(other.transact_tries(&bare(), 1).is_some(), "another address got no answer");
    let v = json_of(&relay.stop());
    assert!(v["unauth_rate_limited"].as_u64().unwrap_or(0) >= 5_000, "{v}");
}

#[test]
fn one_address_cannot_gather_more_allocations_than_the_source_quota_with_per_client_rest_credentials() {
    let mut relay = Relay::start(&["--secret", "s3cret", "--realm", "lab", "--user-quota", "1000", "--json"]);
    let mint = |name: &str| {
        natkit::turn::credentials::rest_credentials("s3cret", Some(name), SystemTime::now(), Duration::from_secs(600))
    };
    // One host, a fresh REST credential (as `natkit signal --turn-secret` mints per client) and socket each time.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..105 {
        let c = Client::bind("127.0.0.1", server(&relay));
        let cred = mint(&format!("client{i}"));
        let m = allocate(&c, &cred.username, &cred.password);
        match turn_udp::code(&m) {
            None => held.push(c),
            Some(486) => refused += 1,
            other => panic!("Allocate {i}: {other:?} {m:?}"),
        }
    }
    assert_eq!(held.len(), 100, "the default --source-quota");
    assert_eq!(refused, 5);
    // A legitimate user on another address still allocates.
    let other = Client::bind("127.0.0.2", server(&relay));
    let cred = mint("legit");
    assert_eq!(allocate(&other, &cred.username, &cred.password).class(), MessageClass::SuccessResponse);
    let v = json_of(&relay.stop());
    assert_eq!(v["source_quota_refusals"], 5, "{v}");
    assert_eq!(v["allocations_created"], 101, "{v}");
}

#[test]
fn debians_classic_rfc3489_stun_client_gets_a_type_from_the_rfc5780_responder() {
    let bin = common::tools::require("stun", "stun-client");
    let port = common::free_port();
    let alt = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let alt_port = alt.to_string();
    let mut relay =
        Relay::start_on(port, &["--listen", &listen, "--alt-ip", "127.0.0.2", "--alt-port", &alt_port, "--json"]);
    let out = std::process::Command::new("timeout")
        .args(["30"])
        .arg(bin)
        .args([&listen, "-v"])
        .output()
        .expect("running stun");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Primary:"), "no verdict from stun:\n{text}");
    assert!(!text.contains("Blocked"), "the classic client got no answers:\n{text}");
    // On loopback nothing is translated or filtered: every test of RFC 3489 §10.1 passes.
    assert!(text.contains("Primary: Open"), "{text}");
    let v = json_of(&relay.stop());
    assert_eq!(v["dropped_packets"], 0, "{v}");
}
