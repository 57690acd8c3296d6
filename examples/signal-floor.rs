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
//! `--raw` goes lower, to what any relay must pay on this kernel: a hand-written
//! RFC 6455 server codec (client frames unmasked in place, unfragmented text
//! only) reading up to 64 KiB per read, and a relayed message written straight
//! into the recipient's socket by the sender's task (`try_write`; the
//! recipient's task only flushes what did not fit). Per relayed message that is
//! one read (or less), one write and whatever epoll costs: no channel, no task
//! wake-up on the way out.
//!
//! Not a server to deploy: it trusts its clients completely. Loopback only.
//!
//! Usage: cargo run --release --example signal-floor -- 127.0.0.1:PORT [--raw] [--current-thread]
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
    let flags: Vec<String> = args.collect();
    let raw = flags.iter().any(|f| f == "--raw");
    let rt = if flags.iter().any(|f| f == "--current-thread") {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let shared: Shared = Arc::default();
        let direct: raw::Shared = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if raw {
                tokio::spawn(raw::serve(tcp, id, direct.clone()));
            } else {
                tokio::spawn(serve(tcp, id, shared.clone()));
            }
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

/// `--raw`: hand framing, direct writes into the recipient's socket.
mod raw {
    use super::*;
    use tokio::sync::Notify;

    pub struct Peer {
        tcp: TcpStream,
        /// Bytes a `try_write` could not take; the owner's task writes them when the socket drains.
        pending: Mutex<Vec<u8>>,
        flush: Notify,
    }

    #[derive(Default)]
    pub struct Registry {
        peers: HashMap<u64, Arc<Peer>>,
        rooms: HashMap<String, Vec<u64>>,
    }

    pub type Shared = Arc<Mutex<Registry>>;

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An unmasked server text frame (RFC 6455 §5.2): the same bytes natkit writes.
    use natkit::signal::ws_out::text_frame as frame;

    impl Peer {
        /// Writes now if the socket takes it; what it does not take waits for the owner's task.
        fn send(&self, bytes: &[u8]) {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                match self.tcp.try_write(bytes) {
                    Ok(n) if n == bytes.len() => return,
                    Ok(n) => pending.extend_from_slice(&bytes[n..]),
                    Err(_) => pending.extend_from_slice(bytes),
                }
            } else {
                pending.extend_from_slice(bytes);
            }
            drop(pending);
            self.flush.notify_one();
        }
    }

    /// Reads the HTTP upgrade request and answers 101; the bytes after the head stay in `buf`.
    async fn handshake(tcp: &TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).ok()?;
                let key = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
                })?;
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                tcp.writable().await.ok()?;
                tcp.try_write(response.as_bytes()).ok()?;
                buf.drain(..end + 4);
                return Some(());
            }
            read_more(tcp, buf).await?;
        }
    }

    async fn read_more(tcp: &TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        // Into spare capacity: nothing is zeroed per read.
        buf.reserve(65536);
        loop {
            match tcp.try_read_buf(buf) {
                Ok(0) => return None,
                Ok(_) => return Some(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.readable().await.ok()?,
                Err(_) => return None,
            }
        }
    }

    pub async fn serve(tcp: TcpStream, id: u64, shared: Shared) {
        let mut buf = Vec::with_capacity(65536);
        if handshake(&tcp, &mut buf).await.is_none() {
            return;
        }
        let me = Arc::new(Peer { tcp, pending: Mutex::new(Vec::new()), flush: Notify::new() });
        lock(&shared).peers.insert(id, me.clone());
        'conn: loop {
            // Every whole frame in the buffer.
            let mut at = 0;
            loop {
                let b = &buf[at..];
                if b.len() < 2 {
                    break;
                }
                let opcode = b[0] & 0x0f;
                let (mut len, mut hdr) = ((b[1] & 0x7f) as usize, 2);
                if len == 126 {
                    if b.len() < 4 {
                        break;
                    }
                    len = u16::from_be_bytes([b[2], b[3]]) as usize;
                    hdr = 4;
                } else if len == 127 {
                    if b.len() < 10 {
                        break;
                    }
                    len = u64::from_be_bytes(b[2..10].try_into().unwrap_or([0xff; 8])) as usize;
                    hdr = 10;
                }
                if b[1] & 0x80 == 0 || len > 1 << 20 {
                    break 'conn; // clients must mask (§5.3); nothing here is that big
                }
                if b.len() < hdr + 4 + len {
                    break;
                }
                let mask = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
                let start = at + hdr + 4;
                let payload = &mut buf[start..start + len];
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i & 3];
                }
                at = start + len;
                match opcode {
                    0x1 => on_text(&buf[start..at], id, &me, &shared),
                    0x8 => break 'conn,
                    0x9 => me.send(&[0x8a, 0]),
                    _ => {}
                }
            }
            buf.drain(..at);
            tokio::select! {
                more = read_more(&me.tcp, &mut buf) => if more.is_none() { break },
                _ = me.flush.notified() => {
                    // Write what others could not, as the socket drains.
                    loop {
                        let done = {
                            let mut pending = lock(&me.pending);
                            match me.tcp.try_write(&pending) {
                                Ok(n) => { pending.drain(..n); }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(_) => break 'conn,
                            }
                            pending.is_empty()
                        };
                        if done { break; }
                        if me.tcp.writable().await.is_err() { break 'conn; }
                    }
                }
            }
        }
        lock(&shared).peers.remove(&id);
    }

    fn on_text(text: &[u8], id: u64, me: &Peer, shared: &Shared) {
        let Ok(msg) = serde_json::from_slice::<In>(text) else { return };
        if msg.kind == "join" {
            let room = msg.room.unwrap_or_default().into_owned();
            let peers = {
                let mut reg = lock(shared);
                let members = reg.rooms.entry(room).or_default();
                let before = members.clone();
                members.push(id);
                before
            };
            let created = serde_json::json!({ "type": "created", "id": id, "peers": peers }).to_string();
            me.send(&frame(created.as_bytes()));
        } else if let Some(to) = msg.to {
            let out = Relayed { kind: &msg.kind, from: id, sdp: msg.sdp.as_deref() };
            let Ok(out) = serde_json::to_vec(&out) else { return };
            let peer = lock(shared).peers.get(&to).cloned();
            if let Some(peer) = peer {
                peer.send(&frame(&out));
            }
        }
    }
}
