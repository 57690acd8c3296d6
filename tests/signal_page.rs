//! What the page `natkit signal` serves shows about the layers under a call, in real headless
//! Chromium and Firefox inside network namespaces (LAB-NOTES: a browser must see no host
//! interface):
//!
//! - the path panel under each remote video names the selected candidate pair: `host` on a
//!   direct call over loopback, `relay` on a relay-only call through `natkit relay`.

mod common;

use std::time::Duration;

use common::browser::{Browser, LoopbackNs, Session};
use common::relay::Relay;
use common::signal::SignalServer;
use fantoccini::Locator;

/// The REST secret shared by `natkit relay --secret` and `natkit signal --turn-secret`.
const SECRET: &str = "page-test-secret";

const PLAYING: &str = "return [...document.querySelectorAll('#remoteDiv video')]
    .some(v => v.videoWidth > 0 && !v.paused && v.readyState >= 2);";

/// For failure messages: each peer connection's candidates as its stats name them.
const CANDIDATES: &str = "return (async () => { const out = []; \
    for (const [id, p] of window.natkit.peers) { const stats = await p.pc.getStats(); const c = []; \
      stats.forEach(r => { if (r.type === 'local-candidate' || r.type === 'remote-candidate') \
        c.push(r.type + ' ' + r.candidateType + ' ' + r.protocol + ' ' + (r.address || r.ip) + ':' + r.port); }); \
      out.push({ candidates: c, signalled: p.signalled }); } \
    return out; })();";

/// Every path panel's data, for assertions and failure messages.
const PANELS: &str = "return [...document.querySelectorAll('#remoteDiv .path')]
    .map(p => ({ state: p.dataset.state, local: p.dataset.local, remote: p.dataset.remote, text: p.innerText }));";

async fn open_and_connect(b: &Session, url: &str, room: &str, relay_only: bool) {
    b.client.goto(url).await.expect("open the page");
    if relay_only {
        b.client.find(Locator::Css("#relayOnly")).await.expect("#relayOnly").click().await.expect("tick relay only");
    }
    let input = b.client.find(Locator::Css("#room")).await.expect("#room");
    input.send_keys(room).await.expect("type the room");
    b.client.find(Locator::Css("#connect")).await.expect("#connect").click().await.expect("click connect");
}

/// Which candidate type both ends of the selected pair must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    RelayOnly,
}

impl Path {
    fn candidate_type(self) -> &'static str {
        match self {
            Path::Direct => "host",
            Path::RelayOnly => "relay",
        }
    }
}

#[test]
fn path_panel_shows_host_pairs_on_a_direct_call_in_chromium() {
    path_panel_shows_the_selected_pair(Browser::Chromium, Path::Direct);
}

#[test]
fn path_panel_shows_host_pairs_on_a_direct_call_in_firefox() {
    path_panel_shows_the_selected_pair(Browser::Firefox, Path::Direct);
}

#[test]
fn path_panel_shows_relay_pairs_on_a_relay_only_call_through_natkit_relay_in_chromium() {
    path_panel_shows_the_selected_pair(Browser::Chromium, Path::RelayOnly);
}

#[test]
fn path_panel_shows_relay_pairs_on_a_relay_only_call_through_natkit_relay_in_firefox() {
    path_panel_shows_the_selected_pair(Browser::Firefox, Path::RelayOnly);
}

/// Two pages of `browser` in one room of a signal server in a loopback-only namespace; with
/// `Path::RelayOnly` both tick "relay only" and the server hands out `natkit relay` (REST
/// credentials per client). Each page's panel must name the expected candidate type on both
/// ends, the connection as connected, and a round-trip time.
fn path_panel_shows_the_selected_pair(browser: Browser, path: Path) {
    let ns = LoopbackNs::new("pp");
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread();
            // Started from this thread: the processes are born in its namespace.
            let relay = (path == Path::RelayOnly).then(|| Relay::start(&["--secret", SECRET, "--allow-loopback-peers"]));
            let turn = relay.as_ref().map(|r| format!("turn:{}?transport=udp", r.addr()));
            let mut args: Vec<&str> = Vec::new();
            if let Some(t) = &turn {
                args.extend(["--turn", t, "--turn-secret", SECRET]);
            }
            let server = SignalServer::start(&args);
            let url = server.http_url();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (a, b) = tokio::join!(browser.start(&ns), browser.start(&ns));
                open_and_connect(&a, &url, "9", path == Path::RelayOnly).await;
                assert!(
                    a.wait_for("return window.natkit.id !== null;", Duration::from_secs(20)).await,
                    "page A never got `created`; server log:\n{}",
                    server.log_text()
                );
                open_and_connect(&b, &url, "9", path == Path::RelayOnly).await;
                let want = path.candidate_type();
                let shows = format!(
                    "return [...document.querySelectorAll('#remoteDiv .path')].some(p => p.dataset.state === 'connected' \
                       && p.dataset.local === '{want}' && p.dataset.remote === '{want}' \
                       && /rtt\\s+[0-9.]+ ms/.test(p.innerText) && p.innerText.includes('{want}'));"
                );
                for (name, page) in [("A", &a), ("B", &b)] {
                    let ok = page.wait_for(PLAYING, Duration::from_secs(30)).await
                        && page.wait_for(&shows, Duration::from_secs(20)).await;
                    assert!(
                        ok,
                        "page {name} ({browser:?}, {path:?}): the panel does not show a connected {want}→{want} pair \
                         with an RTT; status: {}; panels: {}; candidates: {}; server log:\n{}",
                        page.eval("return document.getElementById('status').textContent;").await,
                        page.eval(PANELS).await,
                        page.eval(CANDIDATES).await,
                        server.log_text()
                    );
                }
                // Readable without scrolling on a laptop screen (1366×768, the commonest small one).
                a.client.set_window_size(1366, 768).await.expect("window size");
                let bottom = a.eval("return document.querySelector('#remoteDiv .path').getBoundingClientRect().bottom <= window.innerHeight;").await;
                assert_eq!(bottom, true, "the path panel is below the fold at 1366×768: {}", a.eval(PANELS).await);
                // One panel per remote peer, named briefly (no 22-character peer id on the page).
                let panels = a.eval(PANELS).await;
                let panels = panels.as_array().expect("panels");
                assert_eq!(panels.len(), 1, "{panels:?}");
                let text = panels[0]["text"].as_str().unwrap_or_default();
                assert!(text.starts_with("peer 1"), "{text}");
                let id_b = b.eval("return window.natkit.id;").await;
                assert!(!text.contains(id_b.as_str().expect("B's id")), "{text}");
                a.close().await;
                b.close().await;
            });
            drop(server);
            drop(relay);
        });
    });
}
