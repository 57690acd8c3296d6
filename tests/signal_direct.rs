//! `/ws` deliveries are written straight into the recipient's socket by the
//! delivering task (`signal::ws_out`, issue 18). What that must not break,
//! against the real binary: a member that stops reading is still cut off (and
//! its peer still served), and a burst of relayed frames arrives whole and in
//! order.

mod common;
#[path = "common/raw_clients.rs"]
mod raw_clients;

use common::signal::{SignalServer, metric, metric_settles, metrics_of, rt};
use raw_clients::RawWs;
use serde_json::{Value, json};

const SLOW: &str = r#"natkit_signal_connections_dropped_total{reason="slow_consumer"}"#;

/// Sends offers of `sdp` to `to` in rounds of `round` until the server has cut one slow consumer
/// off (at most `max`, then up to 5 s more for the cut); returns how many were sent.
async fn offer_until_cut_off(
    a: &mut RawWs,
    to: &str,
    sdp: &str,
    round: usize,
    max: usize,
    metrics_addr: &str,
    server: &SignalServer,
) -> usize {
    let mut sent = 0;
    while sent < max && metric(&metrics_of(metrics_addr), SLOW) == 0 {
        for _ in 0..round {
            a.send(json!({"type":"offer","to":to,"sdp":sdp}).to_string()).await;
        }
        sent += round;
    }
    let cut = metric_settles(metrics_addr, SLOW, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(cut, 1, "b was not cut off after {sent} offers of {} B; log:\n{}", sdp.len(), server.log_text());
    sent
}

#[test]
fn a_member_that_never_reads_is_cut_off_and_its_peer_is_still_served() {
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let server = SignalServer::start(&["--metrics", &metrics_addr, "--max-rate", "1000000"]);
    rt().block_on(async {
        let mut a = RawWs::connect(&server.ws_url(), None).await.expect("a connects");
        let mut b = RawWs::connect(&server.ws_url(), None).await.expect("b connects");
        let a_id = a.join("slow").await;
        let b_id = b.join("slow").await;
        let _ = a.recv_type("joined").await;
        // b never reads again. 60 kB offers fill the kernel's buffers (a few MB on
        // loopback), then what the server keeps for a client; the next is refused.
        let sdp = "v".repeat(60_000);
        let sent = offer_until_cut_off(&mut a, &b_id, &sdp, 100, 2_000, &metrics_addr, &server).await;
        println!("b (never reading) cut off after {sent} offers of 60 kB");
        // a hears that b left, and a new member reaches a.
        let (exit, text) = a.recv_type("exit").await;
        assert_eq!(exit.once("from", &text), &Value::from(b_id.clone()));
        let mut c = RawWs::connect(&server.ws_url(), None).await.expect("c connects");
        let c_id = c.join("slow").await;
        c.send(json!({"type":"offer","to":a_id,"sdp":"hello"}).to_string()).await;
        let (offer, text) = a.recv_type("offer").await;
        assert_eq!(offer.once("from", &text), &Value::from(c_id));
        assert_eq!(offer.once("sdp", &text), &Value::from("hello"));
    });
}

/// Attack: two members of one room, one sending the largest messages the server allows
/// (`--max-frame 262144`), the other never reading. Counted in frames alone, the server kept 512
/// of them waiting for the reader (128 MiB on one connection, for the whole 10 s send timeout,
/// on every pair an address may hold): the reader was cut off only after 600 and more offers.
/// Now what waits is bounded in bytes too (64 of the largest messages): the reader is cut off
/// once the kernel's buffers and 16 MiB are full, long before 512 frames.
#[test]
fn a_member_that_never_reads_holds_a_bounded_number_of_bytes_not_512_large_frames() {
    let metrics_addr = format!("127.0.0.1:{}", common::free_port());
    let server = SignalServer::start(&["--metrics", &metrics_addr, "--max-rate", "1000000", "--max-frame", "262144"]);
    rt().block_on(async {
        let mut a = RawWs::connect(&server.ws_url(), None).await.expect("a connects");
        let mut b = RawWs::connect(&server.ws_url(), None).await.expect("b connects");
        let _ = a.join("bytes").await;
        let b_id = b.join("bytes").await;
        let _ = a.recv_type("joined").await;
        let sdp = "w".repeat(250_000);
        let sent = offer_until_cut_off(&mut a, &b_id, &sdp, 10, 1_000, &metrics_addr, &server).await;
        // Loopback's buffers at both ends hold some 10-40 of these; 512 waiting frames were 512 more.
        assert!(sent < 300, "b was cut off only after {sent} offers of 250 kB: more than 512 frames waited");
        println!("b (never reading) cut off after {sent} offers of 250 kB");
    });
}

#[test]
fn a_burst_of_relayed_frames_arrives_whole_and_in_order() {
    let server = SignalServer::start(&["--max-rate", "1000000", "--max-frame", "262144"]);
    rt().block_on(async {
        let mut a = RawWs::connect(&server.ws_url(), None).await.expect("a connects");
        let mut b = RawWs::connect(&server.ws_url(), None).await.expect("b connects");
        let a_id = a.join("order").await;
        let b_id = b.join("order").await;
        let _ = a.recv_type("joined").await;
        const N: usize = 3_000;
        let send = async {
            for i in 0..N {
                // Sizes vary across the 7-bit, 16-bit and 64-bit length forms of RFC 6455 §5.2.
                let sdp = format!("{i} {}", "s".repeat([10, 200, 70_000][i % 3]));
                a.send(json!({"type":"offer","to":b_id,"sdp":sdp}).to_string()).await;
            }
        };
        let recv = async {
            for i in 0..N {
                let (offer, text) = b.recv_type("offer").await;
                offer.assert_no_duplicates(&text);
                assert_eq!(offer.once("from", &text), &Value::from(a_id.clone()));
                let sdp = offer.once("sdp", &text).as_str().expect("sdp is a string").to_string();
                let (n, pad) = sdp.split_once(' ').expect("numbered sdp");
                assert_eq!(n.parse::<usize>().expect("a number"), i, "frames out of order");
                assert_eq!(pad.len(), [10, 200, 70_000][i % 3]);
            }
        };
        tokio::join!(send, recv);
    });
}
