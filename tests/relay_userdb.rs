//! `natkit relay --userdb`: users and REST secrets from coturn's Redis user
//! database, written by coturn's own `turnadmin` (never by hand), against a
//! real `redis-server` on loopback.

mod common;
#[path = "common/redis_outage.rs"]
mod redis_outage;
#[path = "common/turn_udp.rs"]
mod turn_udp;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::relay_server::RelayServer;
use common::{natkit, tools};
use redis_outage::OutageRedis;
use stun_rs::MessageClass;
use turn_udp::{Client, allocate, code};

/// coturn's `turnadmin` against the Redis on `port` (database 0), realm `lab`.
fn turnadmin(port: u16, args: &[&str]) {
    let bin = tools::require("turnadmin", "coturn");
    let db = format!("ip=127.0.0.1 port={port} dbname=0");
    let out = Command::new(bin).args(["-N", &db, "-r", "lab"]).args(args).output().expect("running turnadmin");
    assert!(out.status.success(), "turnadmin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn add_user(port: u16, user: &str, pass: &str) {
    turnadmin(port, &["-a", "-u", user, "-p", pass]);
}

/// `natkit turn-alloc` (the whole audit: two allocations, permissions, channels, data) with `auth`.
fn turn_alloc_ok(relay: &RelayServer, auth: &[&str]) -> bool {
    let out = natkit(
        &[&["turn-alloc", &relay.addr().to_string(), "--realm", "lab", "--packets", "5", "--json"], auth].concat(),
    );
    out.status.code() == Some(0)
}

/// A fresh UDP client (its own 5-tuple) allocating as `user`; the answer's class and error code.
fn try_allocate(relay: &RelayServer, user: &str, pass: &str) -> (MessageClass, Option<u16>) {
    let server: SocketAddr = relay.addr();
    let m = allocate(&Client::bind("127.0.0.1", server), user, pass);
    (m.class(), code(&m))
}

fn allocates(relay: &RelayServer, user: &str, pass: &str) -> bool {
    try_allocate(relay, user, pass).0 == MessageClass::SuccessResponse
}

/// Retries `f` every 200 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `calls=` of a command in `redis-cli info commandstats`.
fn redis_calls(port: u16, command: &str) -> u64 {
    let cli = tools::require("redis-cli", "redis-tools");
    let out = Command::new(cli).args(["-p", &port.to_string(), "info", "commandstats"]).output().expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn userdb_relay(url: &str, extra: &[&str]) -> RelayServer {
    RelayServer::start(&[&["--realm", "lab", "--userdb", url], extra].concat())
}

#[test]
fn turnadmin_users_allocate_next_to_flag_users_and_a_user_added_later_works_without_restart() {
    let redis = OutageRedis::start();
    add_user(redis.port, "alice", "wonderland");
    let relay = userdb_relay(&format!("{}0", redis.url()), &["--user", "carol:flagpass"]);
    assert!(turn_alloc_ok(&relay, &["-u", "alice", "-p", "wonderland"]), "turn-alloc with a turnadmin user");
    assert!(turn_alloc_ok(&relay, &["-u", "carol", "-p", "flagpass"]), "a --user next to the database");
    assert_eq!(try_allocate(&relay, "alice", "wrong"), (MessageClass::ErrorResponse, Some(401)));
    assert_eq!(try_allocate(&relay, "nobody", "x"), (MessageClass::ErrorResponse, Some(401)));
    add_user(redis.port, "bob", "builder");
    assert!(allocates(&relay, "bob", "builder"), "a user added while the relay runs, without a restart");
    add_user(redis.port, "frank", "overtcp");
    assert!(
        turn_alloc_ok(&relay, &["--transport", "tcp", "-u", "frank", "-p", "overtcp"]),
        "a lookup for a request over TCP"
    );
    let text = relay.metrics();
    common::promtool::accepts("natkit relay with --userdb", text.body());
    assert!(text.expect("natkit_relay_userdb_lookups_total") >= 3, "{text}");
    assert!(text.expect("natkit_relay_userdb_cache_hits_total") >= 1, "{text}");
    assert_eq!(text.expect("natkit_relay_userdb_errors_total"), 0, "{text}");
}

#[test]
fn a_rest_secret_written_by_turnadmin_signs_rest_credentials() {
    let redis = OutageRedis::start();
    turnadmin(redis.port, &["-s", "first-secret"]);
    turnadmin(redis.port, &["-s", "second-secret"]);
    let relay = userdb_relay(&format!("{}0", redis.url()), &[]);
    assert!(turn_alloc_ok(&relay, &["--secret", "second-secret", "-u", "dave"]), "either of the realm's secrets");
    assert!(turn_alloc_ok(&relay, &["--secret", "first-secret", "-u", "erin"]));
    assert!(!turn_alloc_ok(&relay, &["--secret", "not-in-redis", "-u", "dave"]));
}

#[test]
fn a_deleted_user_stops_working_once_the_cache_entry_expires() {
    let redis = OutageRedis::start();
    add_user(redis.port, "alice", "wonderland");
    let relay = userdb_relay(&format!("{}0", redis.url()), &["--userdb-cache", "2"]);
    assert!(allocates(&relay, "alice", "wonderland"));
    turnadmin(redis.port, &["-d", "-u", "alice"]);
    assert!(
        eventually(Duration::from_secs(10), || try_allocate(&relay, "alice", "wonderland").1 == Some(401)),
        "a user deleted with turnadmin is refused once the 2 s cache entry expires"
    );
}

#[test]
fn redis_down_keeps_cached_users_refuses_others_with_500_and_counts_then_recovers() {
    let mut redis = OutageRedis::start();
    add_user(redis.port, "alice", "wonderland");
    let relay = userdb_relay(&format!("{}0", redis.url()), &["--userdb-cache", "60", "--userdb-timeout", "500"]);
    assert!(allocates(&relay, "alice", "wonderland"), "alice cached while Redis is up");
    redis.stop();
    assert!(allocates(&relay, "alice", "wonderland"), "a cached user keeps working while Redis is down");
    assert_eq!(
        try_allocate(&relay, "zed", "x"),
        (MessageClass::ErrorResponse, Some(500)),
        "an uncached user gets 500 (try again), not 401"
    );
    let text = relay.metrics();
    assert!(text.expect("natkit_relay_userdb_errors_total") >= 1, "{text}");
    assert!(text.expect("natkit_relay_userdb_unavailable_total") >= 1, "{text}");
    assert_eq!(text.expect("natkit_relay_auth_throttled_total{key=\"source\"}"), 0, "{text}");
    // Back (empty, as after a crash without persistence): a user added now works.
    redis.restart();
    add_user(redis.port, "bob", "builder");
    assert!(
        eventually(Duration::from_secs(10), || allocates(&relay, "bob", "builder")),
        "the relay uses Redis again once it is back, without a restart"
    );
}

#[test]
fn a_flood_of_unknown_usernames_costs_redis_a_bounded_number_of_lookups() {
    let redis = OutageRedis::start();
    add_user(redis.port, "alice", "wonderland");
    let relay = userdb_relay(&format!("{}0", redis.url()), &[]);
    let server: SocketAddr = relay.addr();
    let before = redis_calls(redis.port, "get");
    // Four sources, 500 distinct unknown usernames each, sent without waiting for answers.
    let attackers: Vec<Client> = (2..6).map(|i| Client::bind(&format!("127.0.0.{i}"), server)).collect();
    let nonces: Vec<String> = attackers.iter().map(|c| c.nonce()).collect();
    for round in 0..500 {
        for (i, (c, nonce)) in attackers.iter().zip(&nonces).enumerate() {
            let req = turn_udp::request(
                stun_rs::methods::ALLOCATE,
                vec![turn_udp::udp()],
                Some((&format!("ghost-{i}-{round}"), "guess", nonce)),
            );
            c.sock.send_to(&req, server).expect("send");
        }
        if round % 50 == 49 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for c in &attackers {
        c.drain(Duration::from_millis(500));
    }
    let lookups = redis_calls(redis.port, "get") - before;
    eprintln!("2000 Allocates with unknown usernames from 4 addresses: {lookups} GETs in Redis");
    assert!(lookups >= 4, "the flood did reach the user database ({lookups} GETs)");
    assert!(
        lookups <= 250,
        "2000 unknown usernames cost Redis {lookups} GETs: the throttle and parking bounds must hold it"
    );
    let text = relay.metrics();
    assert_eq!(text.expect("natkit_relay_userdb_lookups_total"), lookups, "every lookup counted:\n{text}");
    assert!(allocates(&relay, "alice", "wonderland"), "a real user from another address still gets in");
}

/// `redis-cli CLIENT PAUSE ms` on the test's own Redis: every client's
/// commands wait that long (a slow user database, not a dead one).
fn pause_redis(port: u16, ms: u64) {
    let cli = tools::require("redis-cli", "redis-tools");
    let out = Command::new(cli)
        .args(["-p", &port.to_string(), "CLIENT", "PAUSE", &ms.to_string()])
        .output()
        .expect("redis-cli CLIENT PAUSE");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"), "CLIENT PAUSE: {out:?}");
}

#[test]
fn a_flood_from_one_address_while_redis_is_slow_is_cut_per_address_and_a_user_elsewhere_still_gets_in() {
    let redis = OutageRedis::start();
    add_user(redis.port, "alice", "wonderland");
    // Lookups may wait 3 s: Redis paused for 1.5 s is slow, not down.
    let relay = userdb_relay(&format!("{}0", redis.url()), &["--userdb-timeout", "3000"]);
    let server: SocketAddr = relay.addr();
    let attacker = Client::bind("127.0.0.2", server);
    let user = Client::bind("127.0.0.3", server);
    let (attacker_nonce, user_nonce) = (attacker.nonce(), user.nonce());
    pause_redis(redis.port, 1500);
    // 200 Allocates with unknown usernames from one address, sent without waiting: each needs a
    // lookup, none can finish while Redis is paused.
    for i in 0..200 {
        let req = turn_udp::request(
            stun_rs::methods::ALLOCATE,
            vec![turn_udp::udp()],
            Some((&format!("ghost-{i}"), "guess", &attacker_nonce)),
        );
        attacker.sock.send_to(&req, server).expect("send");
    }
    // The real user, from another address, behind the same slow Redis: answered once it answers
    // (8 tries 500 ms apart; retransmissions of one request park once).
    let req = turn_udp::request(
        stun_rs::methods::ALLOCATE,
        vec![turn_udp::udp()],
        Some(("alice", "wonderland", &user_nonce)),
    );
    let m = user.transact_tries(&req, 8).expect("an answer for the real user within 4 s");
    assert_eq!(m.class(), MessageClass::SuccessResponse, "the real user gets in: {:?}", code(&m));
    attacker.drain(Duration::from_millis(500));
    let text = relay.metrics();
    let per_ip = text.expect("natkit_relay_userdb_pending_dropped_per_ip_total");
    // --userdb-max-pending-per-ip is 16: at most 16 of the 200 wait, the rest are dropped as the
    // flood of one address (a few may have been let through once Redis answered again).
    assert!(per_ip >= 150, "the flood from one address was cut by the per-address cap: {per_ip} dropped\n{text}");
    assert!(text.expect("natkit_relay_userdb_pending_dropped_total") >= per_ip, "{text}");
}
