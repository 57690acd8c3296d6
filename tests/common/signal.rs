//! `natkit signal` started by a test on loopback (or inside a namespace via a
//! command prefix such as `ip netns exec NS`); killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::free_port;

/// The value of one sample line of Prometheus text.
pub fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in the metrics:\n{text}"))
}

/// The Prometheus text a server's `--metrics` endpoint at `addr` serves.
pub fn metrics_of(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains("200"), "GET /metrics: {status}");
    body
}

/// Polls the metrics (at most `wait`) until `sample` reads `want`; returns the last value.
pub async fn metric_settles(addr: &str, sample: &str, want: u64, wait: std::time::Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let v = metric(&metrics_of(addr), sample);
        if v == want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Prints the server's log when the test fails (the raw clients' panics do not know it).
pub struct LogOnPanic<'a>(pub &'a SignalServer);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log:\n{}", self.0.log_text());
        }
    }
}

pub struct SignalServer {
    child: Child,
    pub port: u16,
    pub ip: String,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl SignalServer {
    /// Starts on 127.0.0.1 with `args` added.
    pub fn start(args: &[&str]) -> SignalServer {
        Self::start_in(&[], "127.0.0.1", args)
    }

    /// Starts under `prefix` (e.g. `["ip","netns","exec","ns1"]`) listening on `ip`.
    pub fn start_in(prefix: &[&str], ip: &str, args: &[&str]) -> SignalServer {
        let port = free_port();
        let listen = format!("{ip}:{port}");
        let bin = env!("CARGO_BIN_EXE_natkit");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["signal", "--listen", &listen, "-v"]).args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting natkit signal");
        let stderr = child.stderr.take().expect("stderr pipe");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before the start is announced, so a caller that reads the log after `start` sees it.
                log2.lock().unwrap_or_else(|p| p.into_inner()).push_str(&format!("{line}\n"));
                if line.contains("natkit signal: page") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut server = SignalServer { child, port, ip: ip.to_string(), log };
        if ready_rx.recv_timeout(Duration::from_secs(15)).is_err() {
            let status = server.child.try_wait();
            panic!("natkit signal did not start on {listen} ({status:?}); stderr:\n{}", server.log_text());
        }
        server
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}:{}/ws", self.ip, self.port)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}:{}/", self.ip, self.port)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Polls the log (at most `wait`) until it contains `needle`: lines after the first arrive a little later.
    pub fn log_shows(&self, needle: &str, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the node dies without telling anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET over loopback; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write GET");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// How long a test waits for a join or a message.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A current-thread runtime for a test's async client code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Connects to `server` and joins `room`, with the server's log in the panic message on failure.
pub async fn join(
    server: &SignalServer,
    room: &str,
) -> (natkit::signal::client::SignalClient, natkit::signal::client::Membership) {
    natkit::signal::client::SignalClient::connect_and_join(
        &server.ws_url(),
        &natkit::signal::client::ClientOptions::default(),
        &natkit::signal::protocol::RoomId::from(room),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("join {room}: {e}\nserver log:\n{}", server.log_text()))
}

/// The next message from the server, within [`WAIT`].
pub async fn recv(c: &mut natkit::signal::client::SignalClient) -> natkit::signal::protocol::ServerMessage {
    tokio::time::timeout(WAIT, c.recv()).await.expect("a message in time").expect("a message")
}

/// What a burst of joiners was told: each joiner's id and the peers its `created` named.
pub type Told = std::collections::HashMap<natkit::signal::protocol::PeerId, Vec<natkit::signal::protocol::PeerId>>;

/// One new client per URL in `urls` joins `room`, all at once: every client
/// connects first, then the joins go out together, so they race inside the
/// server(s). What each was told, and the clients (keep them: dropping one leaves).
pub async fn join_all_at_once(urls: &[String], room: &str) -> (Told, Vec<natkit::signal::client::SignalClient>) {
    use natkit::signal::client::{ClientOptions, SignalClient};
    use natkit::signal::protocol::{ClientMessage, RoomId, ServerMessage};
    let mut clients = Vec::new();
    for url in urls {
        clients.push(SignalClient::connect(url, &ClientOptions::default()).await.expect("connect"));
    }
    let joins = clients.into_iter().map(|mut c| {
        let room = RoomId::from(room);
        tokio::spawn(async move {
            c.send(&ClientMessage::Join { room }).await.expect("send join");
            let created = recv(&mut c).await;
            (c, created)
        })
    });
    let mut told = Told::new();
    let mut kept = Vec::new();
    for j in futures::future::join_all(joins).await {
        let (c, created) = j.expect("join task");
        match created {
            ServerMessage::Created { id, peers, .. } => {
                told.insert(id, peers);
            }
            other => panic!("{room}: expected created, got {other:?}"),
        }
        kept.push(c);
    }
    (told, kept)
}

/// Reads one `joined` per joiner in `told` from `member` and checks that each
/// joiner's `created` named exactly the members heard of before it (`heard`
/// holds those already in the room): joins reach `member` in the order the
/// server(s) let them in.
pub async fn assert_joins_heard_in_order(
    member: &mut natkit::signal::client::SignalClient,
    told: &Told,
    mut heard: Vec<natkit::signal::protocol::PeerId>,
    context: &str,
) {
    use natkit::signal::protocol::ServerMessage;
    for _ in 0..told.len() {
        match recv(member).await {
            ServerMessage::Joined { id, .. } => {
                let peers = told.get(&id).unwrap_or_else(|| panic!("{context}: joined {id}: not one of the joiners"));
                assert_eq!(
                    peers, &heard,
                    "{context}: {id} was told of {peers:?} in created, but the member heard joins in the order {heard:?} before it"
                );
                heard.push(id);
            }
            other => panic!("{context}: expected joined, got {other:?}"),
        }
    }
}
