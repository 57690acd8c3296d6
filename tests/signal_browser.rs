//! Two headless browser pages on the page `natkit signal` serves, in one
//! room: both end up playing the other's camera (fake device), then a hang-up
//! removes the video on the other side. The same test runs Chromium with
//! Chromium, Firefox with Firefox, and Chromium with Firefox both ways round
//! (interop between the two WebRTC stacks). Everything runs inside a network
//! namespace that has only loopback (LAB-NOTES: a browser must not see the
//! host's interfaces).

mod common;

use std::time::Duration;

use common::browser::{Browser, LoopbackNs, Session};
use common::signal::SignalServer;
use fantoccini::Locator;

const PLAYING: &str = "return [...document.querySelectorAll('#remoteDiv video')]
    .some(v => v.videoWidth > 0 && !v.paused && v.readyState >= 2);";

/// For failure messages: each peer connection's states and the candidates it saw.
const ICE_STATE: &str = "return (async () => { const out = []; \
    for (const [id, p] of window.natkit.peers) { const stats = await p.pc.getStats(); const c = []; \
      stats.forEach(r => { if (r.type === 'local-candidate' || r.type === 'remote-candidate') \
        c.push(r.type + ' ' + r.candidateType + ' ' + r.protocol + ' ' + (r.address || r.ip) + ':' + r.port); }); \
      out.push({ peer: id, connection: p.pc.connectionState, ice: p.pc.iceConnectionState, candidates: c }); } \
    return out; })();";

async fn open_and_connect(b: &Session, url: &str, room: &str) {
    b.client.goto(url).await.expect("open the page");
    let input = b.client.find(Locator::Css("#room")).await.expect("#room");
    input.send_keys(room).await.expect("type the room");
    b.client.find(Locator::Css("#connect")).await.expect("#connect").click().await.expect("click connect");
}

#[test]
fn two_chromium_pages_in_one_room_play_each_others_video_and_hang_up() {
    two_pages_play_each_others_video_and_hang_up(Browser::Chromium, Browser::Chromium);
}

#[test]
fn two_firefox_pages_in_one_room_play_each_others_video_and_hang_up() {
    two_pages_play_each_others_video_and_hang_up(Browser::Firefox, Browser::Firefox);
}

// Between the two browsers both ways round: the second page to join makes the offer, so each
// WebRTC stack is once the offerer and once the answerer.
#[test]
fn a_chromium_page_then_a_firefox_page_in_one_room_play_each_others_video_and_hang_up() {
    two_pages_play_each_others_video_and_hang_up(Browser::Chromium, Browser::Firefox);
}

#[test]
fn a_firefox_page_then_a_chromium_page_in_one_room_play_each_others_video_and_hang_up() {
    two_pages_play_each_others_video_and_hang_up(Browser::Firefox, Browser::Chromium);
}

/// Page A (`first`) joins first and waits; page B (`second`) joins and calls A. Then B hangs up.
fn two_pages_play_each_others_video_and_hang_up(first: Browser, second: Browser) {
    let ns = LoopbackNs::new("sg");
    let server = SignalServer::start_in(&ns.prefix(), "127.0.0.1", &[]);
    let url = server.http_url();
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                // Both browsers start at once: browser start-up is most of the test's time.
                let (a, b) = tokio::join!(first.start(&ns), second.start(&ns));
                open_and_connect(&a, &url, "7").await;
                assert!(
                    a.wait_for("return window.natkit.id !== null;", Duration::from_secs(20)).await,
                    "page A never got `created`; status: {}; server log:\n{}",
                    a.eval("return document.getElementById('status').textContent;").await,
                    server.log_text()
                );
                open_and_connect(&b, &url, "7").await;
                for (name, page) in [("A", &a), ("B", &b)] {
                    let ok = page.wait_for(PLAYING, Duration::from_secs(30)).await;
                    assert!(
                        ok,
                        "page {name} is not playing the other's video ({first:?} A, {second:?} B); status: {}; ICE: {}; server log:\n{}",
                        page.eval("return document.getElementById('status').textContent;").await,
                        page.eval(ICE_STATE).await,
                        server.log_text()
                    );
                }
                // One <video> per remote peer, and the local camera shows too.
                assert_eq!(a.eval("return document.querySelectorAll('#remoteDiv video').length;").await, 1);
                assert_eq!(a.eval("return document.getElementById('localVideo').videoWidth > 0;").await, true);

                // B hangs up: its camera and peer connections close; A removes B's video.
                b.client.find(Locator::Css("#logout")).await.expect("#logout").click().await.expect("click hang up");
                assert!(
                    a.wait_for("return document.querySelectorAll('#remoteDiv video').length === 0;", Duration::from_secs(15))
                        .await,
                    "page A still shows B's video after B hung up"
                );
                assert_eq!(b.eval("return document.getElementById('localVideo').srcObject === null && window.natkit.peers.size === 0;").await, true);
                a.close().await;
                b.close().await;
            });
        });
    });
    drop(server);
}
