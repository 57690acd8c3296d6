//! The driver of the `turn-alloc` scenario: carries out each [`Action`] the sans-IO
//! [`Scenario`] asks for over real connections ([`TurnSession`], UDP, TCP or TLS),
//! and hands the outcome back with the time it arrived. All waiting, sockets and
//! clocks are here; every decision is in the scenario.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::explain::RoundTripError;
use super::quality::{self, Samples};
use super::report::TurnAllocReport;
use super::scenario::{Action, CHANNEL, Connected, Input, Reply, Scenario, Side};
use super::tcp_relay::{self, TcpAuditConfig};
use super::{AuditConfig, CredentialSpec};
use crate::error::UsageError;
use crate::net::stream;
use crate::net::tls::TlsClient;
use crate::net::transport::Transport;
use crate::net::turn_session::{Link, PeerData, TurnSession};
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id};
use crate::stun::transaction::{Reliability, Retransmit};
use crate::turn::client::{ClientConfig, DataPath, TurnClient};
use crate::turn::credentials::{Credentials, rest_credentials};

/// Runs every step once and builds the report; a server name that does not exist is
/// bad input (exit 2), like a CA file that cannot be read.
pub async fn run(cfg: &AuditConfig) -> Result<TurnAllocReport, UsageError> {
    let tls = match cfg.plan.transport {
        Transport::Tls => Some(TlsClient::new(&cfg.tls)?),
        _ => None,
    };
    let mut d = Driver {
        cfg,
        // Made per run: TURN REST credentials expire (an hour), a `--every` watch does not.
        credentials: cfg.credentials.mint(SystemTime::now()),
        tls,
        client: None,
        peer: None,
    };
    let mut scenario = Scenario::new(cfg.plan.clone(), Instant::now());
    loop {
        let input = match scenario.poll_action() {
            Action::Done => break,
            action => d.carry_out(action).await,
        };
        scenario.handle_input(input, Instant::now());
    }
    scenario.finish()
}

struct Driver<'a> {
    cfg: &'a AuditConfig,
    credentials: Option<Credentials>,
    tls: Option<TlsClient>,
    /// The allocation under test.
    client: Option<TurnSession>,
    /// The second allocation, the data peer.
    peer: Option<TurnSession>,
}

impl Driver<'_> {
    async fn carry_out(&mut self, action: Action) -> Input {
        let timeout = self.cfg.plan.timeout;
        match action {
            Action::Resolve => {
                let deadline = tokio::time::Instant::now() + timeout;
                let plan = &self.cfg.plan;
                Input::Resolved(plan.spec.resolve_by(plan.transport, self.cfg.resolve_family, deadline).await)
            }
            Action::Connect { side, server } => Input::Connected(self.connect(side, server).await),
            Action::Request { side, request, auth } => {
                let Some(s) = self.session(side) else {
                    return Input::Answered(Err(std::io::Error::other("no connection")));
                };
                Input::Answered(s.request(request, auth).await.map(|a| Reply {
                    result: a.result,
                    rtt: a.rtt,
                    auth_retries: a.auth_retries,
                    realm: s.client.realm().map(str::to_string),
                    has_nonce: s.client.nonce().is_some(),
                    stale_nonces: s.client.stale_nonces,
                }))
            }
            Action::RoundTrip { peer, relayed, payload, channel } => {
                Input::RoundTrip(self.round_trip(peer, relayed, payload, channel).await)
            }
            Action::Quality => Input::Quality(self.quality().await),
            Action::LoopbackProbe { target } => Input::LoopbackAnswered(self.loopback_probe(target).await),
            Action::Wait(d) => {
                tokio::time::sleep(d).await;
                Input::Waited
            }
            Action::TcpRelay { peer, server } => {
                let q = &self.cfg.quality;
                let cfg = TcpAuditConfig {
                    server,
                    host: &self.cfg.plan.spec.host,
                    tls: self.tls.as_ref(),
                    credentials: self.credentials.clone(),
                    peer,
                    messages: q.packets.clamp(1, 1000),
                    size: q.size,
                    timeout,
                };
                Input::TcpRelay(Box::new(tcp_relay::run(&cfg).await))
            }
            Action::Done => Input::Waited,
        }
    }

    fn session(&mut self, side: Side) -> Option<&mut TurnSession> {
        match side {
            Side::Client => self.client.as_mut(),
            Side::Peer => self.peer.as_mut(),
        }
    }

    /// Opens a connection to `server` with a fresh client core for `side`.
    async fn connect(&mut self, side: Side, server: SocketAddr) -> Result<Connected, String> {
        let plan = &self.cfg.plan;
        let reliability = match plan.transport {
            Transport::Udp => Reliability::Unreliable(Retransmit::default()),
            _ => Reliability::Reliable { ti: plan.timeout },
        };
        let cfg = ClientConfig {
            credentials: self.credentials.clone(),
            reliability,
            request_timeout: plan.timeout,
            pad_channel_data: plan.transport != Transport::Udp,
        };
        let (link, local) = match plan.transport {
            Transport::Udp => {
                let any: SocketAddr =
                    if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| "bind")?;
                let sock =
                    tokio::net::UdpSocket::bind(any).await.map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
                sock.connect(server).await.map_err(|e| format!("cannot reach {server} over UDP: {e}"))?;
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                (Link::Udp(sock), local)
            }
            Transport::Tcp | Transport::Tls => {
                let conn = stream::connect(server, None, &plan.spec.host, self.tls.as_ref(), plan.timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                let local = conn.local;
                (Link::Stream(conn), local)
            }
        };
        let session = TurnSession::new(link, TurnClient::new(cfg), local, server);
        let connected = Connected { local, server, cert: self.tls.as_ref().and_then(TlsClient::verdict) };
        match side {
            Side::Client => self.client = Some(session),
            Side::Peer => self.peer = Some(session),
        }
        Ok(connected)
    }

    /// Sends `payload` from the client allocation to `peer` and waits for it to come
    /// back (our second allocation echoes it, or the external peer does). Returns the
    /// round-trip time.
    async fn round_trip(
        &mut self,
        peer: SocketAddr,
        relayed: SocketAddr,
        payload: &[u8],
        channel: Option<u16>,
    ) -> Result<Duration, RoundTripError> {
        let started = Instant::now();
        let deadline = started + self.cfg.plan.timeout;
        let (Some(a), b) = (self.client.as_mut(), self.peer.as_mut()) else {
            return Err(RoundTripError::Io(std::io::Error::other("no connection")));
        };
        send_via(a, peer, payload, channel).await.map_err(RoundTripError::Io)?;
        if let Some(b) = b {
            match b.recv_data(deadline).await.map_err(RoundTripError::Io)? {
                Some(PeerData { peer: from, data, path, .. }) if data == payload => {
                    if from != relayed {
                        return Err(RoundTripError::PeerGotWrongSource { from, relayed });
                    }
                    if !path_matches(path, channel) {
                        return Err(RoundTripError::PeerGotWrongPath(path));
                    }
                    send_via(b, relayed, &data, channel).await.map_err(RoundTripError::Io)?;
                }
                Some(other) => return Err(RoundTripError::PeerGotOther { from: other.peer }),
                None => return Err(RoundTripError::NotAtPeer),
            }
        }
        match a.recv_data(deadline).await.map_err(RoundTripError::Io)? {
            Some(PeerData { peer: from, data, path, at })
                if data == payload && from == peer && path_matches(path, channel) =>
            {
                Ok(at.saturating_duration_since(started))
            }
            Some(other) => {
                Err(RoundTripError::Unexpected { from: other.peer, len: other.data.len(), path: other.path })
            }
            None => Err(RoundTripError::NothingBack),
        }
    }

    /// `--packets` at `--rate` over the channel; our second allocation (or the external
    /// peer) echoes. Returns the samples; [`quality`] makes the figures.
    async fn quality(&mut self) -> Samples {
        let q = self.cfg.quality;
        let timeout = self.cfg.plan.timeout;
        let (Some(a), b) = (self.client.as_mut(), self.peer.as_mut()) else {
            return Samples::default();
        };
        let n = q.packets;
        let interval = Duration::from_secs_f64(1.0 / q.rate as f64);
        let t0 = Instant::now();
        let grace = timeout.min(Duration::from_secs(3));
        let end = t0 + interval * n + grace;
        let sender_done = std::cell::Cell::new(false);
        let since = |at: Instant, sent: Duration| at.saturating_duration_since(t0 + sent).as_secs_f64() * 1000.0;

        let sender = async {
            let mut rtts: Vec<f64> = Vec::new();
            let mut sent = 0u32;
            for seq in 0..n {
                let due = t0 + interval * seq;
                while let Ok(Some(d)) = a.recv_data(due).await {
                    if let Some((_, at)) = quality::decode_probe(&d.data) {
                        rtts.push(since(d.at, at));
                    }
                }
                let pkt = quality::encode_probe(seq, t0.elapsed(), q.size);
                if a.send_channel_data(CHANNEL, &pkt).await.is_ok() {
                    sent += 1;
                }
            }
            while rtts.len() < sent as usize {
                match a.recv_data(end).await {
                    Ok(Some(d)) => {
                        if let Some((_, at)) = quality::decode_probe(&d.data) {
                            rtts.push(since(d.at, at));
                        }
                    }
                    _ => break,
                }
            }
            sender_done.set(true);
            (sent, rtts)
        };
        let echoer = async {
            let mut transits = Vec::new();
            if let Some(b) = b {
                // Short waits, so the echoer ends soon after the sender has all it will get.
                while !sender_done.get() && Instant::now() < end {
                    let slice = (Instant::now() + Duration::from_millis(20)).min(end);
                    while let Ok(Some(d)) = b.recv_data(slice).await {
                        if let Some((_, at)) = quality::decode_probe(&d.data) {
                            transits.push(since(d.at, at));
                            let _ = b.send_channel_data(CHANNEL, &d.data).await;
                        }
                    }
                }
            }
            transits
        };
        let ((sent, rtts), transits) = tokio::join!(sender, echoer);
        Samples { sent, rtts, transits }
    }

    /// Does the relay reach its own loopback? A STUN request to `target` (its own port),
    /// through itself, answered within the timeout (at most 2 s).
    async fn loopback_probe(&mut self, target: SocketAddr) -> bool {
        let wait = self.cfg.plan.timeout.min(Duration::from_secs(2));
        let Some(a) = self.client.as_mut() else { return false };
        let id = new_transaction_id();
        if a.send_indication(target, &binding_request(id)).await.is_err() {
            return false;
        }
        let until = Instant::now() + wait;
        while let Ok(Some(d)) = a.recv_data(until).await {
            if d.peer == target && BindingResponse::parse(&d.data).is_ok() {
                return true;
            }
        }
        false
    }
}

async fn send_via(s: &mut TurnSession, to: SocketAddr, data: &[u8], channel: Option<u16>) -> std::io::Result<()> {
    match channel {
        Some(c) => s.send_channel_data(c, data).await,
        None => s.send_indication(to, data).await,
    }
}

fn path_matches(path: DataPath, channel: Option<u16>) -> bool {
    match (path, channel) {
        (DataPath::Indication, None) => true,
        (DataPath::Channel(c), Some(want)) => c == want,
        _ => false,
    }
}

impl CredentialSpec {
    /// The credentials to present, made now (REST credentials are valid for an hour).
    pub fn mint(&self, now: SystemTime) -> Option<Credentials> {
        match self {
            CredentialSpec::None => None,
            CredentialSpec::LongTerm(c) => Some(c.clone()),
            CredentialSpec::Rest { secret, name } => {
                Some(rest_credentials(secret, name.as_deref(), now, Duration::from_secs(3600)))
            }
        }
    }
}
