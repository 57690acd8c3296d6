//! Driver for the TURN client core: one allocation's connection to a server
//! over UDP, TCP or TLS. It owns the socket and the timer; the protocol is in
//! `turn::client`. The loop has the shape of `net::udp::drive` and
//! `net::stream::run_transaction`: send what `poll_transmit` yields, sleep until
//! `poll_timeout`, then feed the core `handle_input` or `handle_timeout`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::net::stream::StreamConn;
use crate::turn::client::{Auth, DataPath, Event, Failure, Request, Success, TurnClient};

/// The connection to the server.
pub enum Link {
    /// A connected UDP socket, so ICMP errors surface on it.
    Udp(UdpSocket),
    Stream(StreamConn),
}

impl Link {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp(s) => s.send(bytes).await.map(|_| ()),
            Link::Stream(s) => s.send(bytes).await,
        }
    }

    /// One datagram or frame; cancel-safe.
    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let n = s.recv(&mut buf).await?;
                buf.truncate(n);
                Ok(buf)
            }
            Link::Stream(s) => s.recv_frame().await,
        }
    }
}

/// Data received from a peer through the relay.
#[derive(Debug, Clone)]
pub struct PeerData {
    pub peer: SocketAddr,
    pub data: Vec<u8>,
    pub path: DataPath,
    pub at: Instant,
}

/// The outcome of one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: Result<Success, Failure>,
    pub rtt: Duration,
    pub auth_retries: u8,
}

pub struct TurnSession {
    link: Link,
    pub client: TurnClient,
    backlog: VecDeque<PeerData>,
    pub local: SocketAddr,
    pub server: SocketAddr,
}

impl TurnSession {
    pub fn new(link: Link, client: TurnClient, local: SocketAddr, server: SocketAddr) -> Self {
        TurnSession { link, client, backlog: VecDeque::new(), local, server }
    }

    async fn drive_transmit(&mut self) -> io::Result<()> {
        let now = Instant::now();
        while let Some(b) = self.client.poll_transmit(now) {
            self.link.send(&b).await?;
        }
        Ok(())
    }

    /// One turn of the loop: transmit, then wait for input or the next timer (at
    /// most until `deadline`) and hand it to the core.
    async fn drive_once(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.drive_transmit().await?;
        let wake = [self.client.poll_timeout(), deadline].into_iter().flatten().min();
        let sleep = async {
            match wake {
                Some(w) => tokio::time::sleep_until(w.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.link.recv() => self.client.handle_input(&r?, Instant::now()),
            _ = sleep => self.client.handle_timeout(Instant::now()),
        }
        Ok(())
    }

    /// Makes a request and waits for its result; data arriving meanwhile is kept.
    pub async fn request(&mut self, req: Request, auth: Auth) -> io::Result<Answer> {
        let id = self.client.request(req, auth, Instant::now());
        loop {
            while let Some(ev) = self.client.poll_event() {
                match ev {
                    Event::Response { id: got, result, rtt, auth_retries } if got == id => {
                        self.drive_transmit().await?;
                        return Ok(Answer { result, rtt, auth_retries });
                    }
                    Event::Response { .. } => {}
                    Event::Data { peer, data, path } => {
                        self.backlog.push_back(PeerData { peer, data, path, at: Instant::now() })
                    }
                }
            }
            self.drive_once(None).await?;
        }
    }

    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.client.send_indication(peer, data);
        self.drive_transmit().await
    }

    pub async fn send_channel_data(&mut self, channel: u16, data: &[u8]) -> io::Result<()> {
        self.client.send_channel_data(channel, data);
        self.drive_transmit().await
    }

    /// The next data from a peer, or None at `deadline`.
    pub async fn recv_data(&mut self, deadline: Instant) -> io::Result<Option<PeerData>> {
        loop {
            if let Some(d) = self.backlog.pop_front() {
                return Ok(Some(d));
            }
            while let Some(ev) = self.client.poll_event() {
                if let Event::Data { peer, data, path } = ev {
                    self.backlog.push_back(PeerData { peer, data, path, at: Instant::now() });
                }
            }
            if !self.backlog.is_empty() {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.drive_once(Some(deadline)).await?;
        }
    }
}
