//! The floor for `scripts/bench-signal`: the least a tokio WebSocket relay
//! must do per relayed message on this kernel, to set natkit's CPU per
//! message against (issue #18).
//!
//! It speaks just enough of natkit's `/ws` protocol for the bench's load
//! client (`tests/node/bench_client.js`): `join` → `created {id, peers}`, and
//! any other message with a `to` goes to that peer with `from` added. Nothing
//! else: no limits, no origin check, no ping, no metrics, no idle timer, no
//! room size, no validation beyond what routing needs. Every connection is one
//! task on the same tokio runtime natkit uses, reading and writing through
//! tokio-tungstenite (RFC 6455 framing, masking, UTF-8 check), and a relayed
//! message crosses to the recipient's task over a channel, as in natkit.
//!
//! Not a server to deploy: it trusts its clients completely. Loopback only.
//!
//! Usage: cargo run --release --example signal-floor -- 127.0.0.1:PORT [--current-thread]
//! (`--current-thread`: one thread for everything, no work stealing; the
//! default is tokio's multi-threaded runtime, one worker per core, as natkit).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    to: Option<u64>,
    #[serde(borrow, default)]
    sdp: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct Relayed<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    from: u64,
    sdp: Option<&'a str>,
}

#[derive(Default)]
struct Registry {
    peers: HashMap<u64, mpsc::UnboundedSender<String>>,
    rooms: HashMap<String, Vec<u64>>,
}

type Shared = Arc<Mutex<Registry>>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: signal-floor 127.0.0.1:PORT [--current-thread]");
        std::process::exit(2)
    });
    let rt = if args.next().as_deref() == Some("--current-thread") {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let shared: Shared = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(tcp, id, shared.clone()));
        }
    })
}

async fn serve(tcp: TcpStream, id: u64, shared: Shared) {
    // tungstenite's default read buffer (128 KiB) is zeroed per read: a 4 KiB one, as natkit's.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else { return };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    shared.lock().unwrap_or_else(|p| p.into_inner()).peers.insert(id, tx);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(Message::Text(text))) = frame else { break };
                let Ok(msg) = serde_json::from_str::<In>(text.as_str()) else { continue };
                if msg.kind == "join" {
                    let room = msg.room.unwrap_or_default().into_owned();
                    let peers = {
                        let mut reg = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let members = reg.rooms.entry(room).or_default();
                        let before = members.clone();
                        members.push(id);
                        before
                    };
                    let created = serde_json::json!({ "type": "created", "id": id, "peers": peers }).to_string();
                    if ws.send(Message::text(created)).await.is_err() {
                        break;
                    }
                } else if let Some(to) = msg.to {
                    let out = Relayed { kind: &msg.kind, from: id, sdp: msg.sdp.as_deref() };
                    let Ok(out) = serde_json::to_string(&out) else { continue };
                    if let Some(tx) = shared.lock().unwrap_or_else(|p| p.into_inner()).peers.get(&to) {
                        let _ = tx.send(out);
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                if ws.send(Message::text(out)).await.is_err() {
                    break;
                }
            }
        }
    }
    shared.lock().unwrap_or_else(|p| p.into_inner()).peers.remove(&id);
}
