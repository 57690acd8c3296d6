//! `natkit relay` attacked the way the internet attacks a TURN server (issue
//! #13): each test is one break, reproduced against the real binary on
//! loopback (127.0.0.x) or inside a network namespace the test made, with
//! figures asserted as counts, never as times.

mod common;
#[path = "common/turn_udp.rs"]
mod turn_udp;

use std::net::SocketAddr;
use std::time::Duration;

use common::json_of;
use common::relay::Relay;
use stun_rs::MessageClass;
use stun_rs::methods::ALLOCATE;
use turn_udp::{Client, allocate, any_success, request, request_with_fingerprint, udp};

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
    // A burst of 10, then locks of 0.5 s, 1 s, 2 s, ...: a handful more at most.
    assert!(checked <= 20, "{checked} of 10,000 guesses had their integrity checked\n{v}");
    assert!(checked >= 10, "the burst is checked: {v}");
    assert!(refused + checked >= 9_500, "most guesses reached the relay and were refused unchecked: {v}");
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
