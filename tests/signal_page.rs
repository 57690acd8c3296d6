//! What the page `natkit signal` serves shows about the layers under a call, in real headless
//! Chromium and Firefox inside network namespaces (LAB-NOTES: a browser must see no host
//! interface):
//!
//! - the path panel under each remote video names the selected candidate pair: `host` on a
//!   direct call over loopback, `relay` on a relay-only call through `natkit relay`;
//! - `/ice`, the Trickle-ICE-style test page, gathers host, srflx and relay candidates against
//!   `natkit relay` from behind a lab NAT and says in words that STUN and TURN work, and that a
//!   TURN server with a wrong password does not; the servers it lists are not handed to other sites.
//!
//! Each page is also photographed (WebDriver Take Screenshot: CDP `Page.captureScreenshot` under
//! chromedriver) and the PNG checked; with `NATKIT_UPDATE_SCREENSHOTS=1` the Chromium ones are
//! written to `docs/img/` for the README (never otherwise: a test run leaves the tree clean).

mod common;

use std::time::Duration;

use common::browser::{Browser, LoopbackNs, Session, enter_netns};
use common::lab::{Lab, NatKind};
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
                // The picture for the README: the relay call in Chromium, once bitrates are in.
                let rates = "return /[0-9] [kM]bit\\/s/.test(document.querySelector('#remoteDiv .path').innerText);";
                assert!(a.wait_for(rates, Duration::from_secs(10)).await, "no bitrate in the panel: {}", a.eval(PANELS).await);
                let save = (browser == Browser::Chromium && path == Path::RelayOnly).then_some("page-path-panel.png");
                a.screenshot_png(&format!("the page in {browser:?} ({path:?})"), save).await;
                a.close().await;
                b.close().await;
            });
            drop(server);
            drop(relay);
        });
    });
}

#[test]
fn ice_page_in_chromium_gathers_host_srflx_and_relay_and_names_a_wrong_turn_password() {
    ice_page_gathers_and_judges_each_server(Browser::Chromium);
}

#[test]
fn ice_page_in_firefox_gathers_host_srflx_and_relay_and_names_a_wrong_turn_password() {
    ice_page_gathers_and_judges_each_server(Browser::Firefox);
}

/// Every verdict line, for assertions and failure messages.
const VERDICTS: &str = "return [...document.querySelectorAll('#verdicts li')]
    .map(li => ({ url: li.dataset.url, ok: li.dataset.ok, text: li.lastChild.textContent }));";

/// `/ice` from a browser behind a port-restricted NAT of the lab; `natkit relay` (STUN and TURN,
/// REST secret) and `natkit signal` (handing both out) on the public segment. The user adds the
/// same TURN server with a wrong password, then gathers: the candidates show host, srflx (the
/// router's public address) and relay (on the relay), the handed-out servers get a working
/// verdict, the added one a failure verdict.
fn ice_page_gathers_and_judges_each_server(browser: Browser) {
    let lab = Lab::builder().nat("a", NatKind::PortRestrictedCone).build();
    let public = lab.public_ips()[0].to_string();
    let router = lab.nat("a").public_ip.to_string();
    let (pub_ns, client_ns) = (lab.public_ns(), lab.client_ns("a"));
    std::thread::scope(|s| {
        s.spawn(|| {
            // The servers are born in the public namespace: started from this thread while it is in it.
            enter_netns(&pub_ns);
            let port = common::free_port();
            let (on_public, on_lo) = (format!("{public}:{port}"), format!("127.0.0.1:{port}"));
            // The loopback listener is only for the helper's readiness check.
            let relay = Relay::start_on(
                port,
                &["--listen", &on_public, "--listen", &on_lo, "--relay-ip", &public, "--secret", SECRET],
            );
            let stun = format!("stun:{on_public}");
            let turn = format!("turn:{on_public}?transport=udp");
            let server =
                SignalServer::start_in(&[], &public, &["--stun", &stun, "--turn", &turn, "--turn-secret", SECRET]);
            let url = format!("{}ice", server.http_url());
            // Then the browser, in the client namespace behind the NAT.
            enter_netns(&client_ns);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let b = browser.start_in(&client_ns).await;
                b.client.set_window_size(1366, 768).await.expect("window size");
                b.client.goto(&url).await.expect("open /ice");
                let listed = "return [...document.querySelectorAll('#servers tbody tr')].map(r => r.dataset.url).join(' ');";
                assert!(
                    b.wait_for(
                        &format!("return [...document.querySelectorAll('#servers tbody tr')].some(r => r.dataset.url === '{turn}');"),
                        Duration::from_secs(10)
                    )
                    .await,
                    "/ice does not list the handed-out servers: {}; server log:\n{}",
                    b.eval(listed).await,
                    server.log_text()
                );
                // The handed-out TURN entry carries this client's REST username (EXPIRY:NAME).
                let user = b.eval(&format!("return window.natkitIce.servers.find(s => s.url === '{turn}').username;")).await;
                assert!(user.as_str().is_some_and(|u| u.contains(':')), "no per-client credentials: {user}");

                // The same relay, added by hand with a password that is not the secret's.
                let wrong = format!("turn:{on_public}");
                b.client.find(Locator::Css("#url")).await.expect("#url").send_keys(&wrong).await.expect("type url");
                b.client.find(Locator::Css("#username")).await.expect("#username").send_keys("4102444800:someone").await.expect("type user");
                b.client.find(Locator::Css("#password")).await.expect("#password").send_keys("not-the-password").await.expect("type password");
                b.client.find(Locator::Css("#add")).await.expect("#add").click().await.expect("click add");
                b.client.find(Locator::Css("#gather")).await.expect("#gather").click().await.expect("click gather");
                let finished = b.wait_for("return document.getElementById('summary').dataset.done === 'true';", Duration::from_secs(40)).await;
                let verdicts = b.eval(VERDICTS).await;
                let candidates = b.eval("return [...document.querySelectorAll('#candidates tbody tr')].map(r => r.innerText);").await;
                let context = format!("verdicts: {verdicts:#}\ncandidates: {candidates:#}\nserver log:\n{}", server.log_text());
                assert!(finished, "gathering never finished; {context}");
                for t in ["host", "srflx", "relay"] {
                    let n = b.eval(&format!("return document.querySelectorAll('#candidates tbody tr[data-type=\"{t}\"]').length;")).await;
                    assert!(n.as_u64().unwrap_or(0) > 0, "no {t} candidate shown ({browser:?}); {context}");
                }
                let verdict = |url: &str| {
                    verdicts.as_array().and_then(|v| v.iter().find(|x| x["url"] == url)).cloned().unwrap_or_default()
                };
                let (v_turn, v_stun, v_wrong) = (verdict(&turn), verdict(&stun), verdict(&wrong));
                let text = |v: &serde_json::Value| v["text"].as_str().unwrap_or_default().to_string();
                assert_eq!(v_turn["ok"], "true", "{context}");
                assert!(text(&v_turn).starts_with(&format!("TURN over UDP works: relay candidate {public}:")), "{context}");
                assert_eq!(v_stun["ok"], "true", "{context}");
                assert!(text(&v_stun).starts_with(&format!("STUN works: srflx candidate {router}:")), "{context}");
                assert_eq!(v_wrong["ok"], "false", "{context}");
                assert!(text(&v_wrong).starts_with("no relay candidate"), "{context}");
                assert!(text(&v_wrong).contains("401 from the server — wrong credentials?"), "{context}");
                let summary = b.eval("return document.getElementById('summary').textContent;").await;
                assert!(summary.as_str().is_some_and(|s| s.starts_with("Gathering took ")), "{summary}");
                let save = (browser == Browser::Chromium).then_some("ice.png");
                b.screenshot_png(&format!("/ice in {browser:?}"), save).await;
                b.close().await;
            });
            drop(server);
            drop(relay);
        });
    });
    drop(lab);
}

/// A GET with extra header lines; returns (status line, body).
fn get_with(addr: &str, path: &str, headers: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").expect("write GET");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The credentials `/ice/servers` hands out go to this server's own pages and to non-browser
/// clients, like `created` on `/ws`; another site can get them neither by `fetch` (it sends
/// `Origin`) nor by `<script src>` (no `Origin`, but `Sec-Fetch-Site: cross-site`).
#[test]
fn ice_servers_are_refused_to_other_sites_and_served_to_the_own_page() {
    let server = SignalServer::start(&["--turn", "turn:127.0.0.1:3478?transport=udp", "--turn-secret", SECRET]);
    let addr = format!("127.0.0.1:{}", server.port);
    let (status, body) = get_with(&addr, "/ice/servers", "Sec-Fetch-Site: same-origin\r\n");
    assert!(status.contains("200"), "{status}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let user = json["ice_servers"][0]["username"].as_str().unwrap_or_default();
    assert!(user.contains(':') && json["ice_servers"][0]["credential"].is_string(), "{json}");
    for attack in [
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Dest: script\r\n",
        "Sec-Fetch-Site: same-site\r\n",
        "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n",
        "Origin: null\r\n",
    ] {
        let (status, body) = get_with(&addr, "/ice/servers", attack);
        assert!(status.contains("403"), "{attack:?} got {status}");
        assert!(!body.contains(user), "{attack:?} leaked the credentials");
    }
    // The page itself is served to anyone who opens it.
    let (status, body) = get_with(&addr, "/ice", "Sec-Fetch-Site: none\r\n");
    assert!(status.contains("200") && body.contains("natkit ICE test"), "{status}");
}
