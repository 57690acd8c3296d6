//! Drives str0m's sans-IO ICE agent (`is::IceAgent`) on the shared socket:
//! STUN datagrams diverted by the mux go in, the agent's transmits go out,
//! and its nomination comes back as [`IceEvent::Nominated`]. It keeps running
//! after nomination so consent checks and keepalives hold the NAT bindings.
//! Checks from our relayed candidate go through the [`RelayLink`], whose
//! timers (allocation, permission and channel refreshes) it also keeps.
//! Once a pair is nominated it runs consent freshness on it ([`Consent`], RFC 7675) and
//! reports silence as [`IceEvent::PathLost`] / [`IceEvent::ConsentExpired`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use is::stun::{StunMessage, StunPacket};
use is::{Candidate, IceAgent, IceAgentEvent, IceConnectionState, Protocol};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::ice::checks::CheckLog;
use crate::net::udp::local_ip_towards;
use crate::punch::consent::{Consent, ConsentConfig, ConsentEvent};
use crate::punch::mux::StunDatagram;
use crate::punch::relay_link::RelayLink;
use crate::stun::message::{BindingResponse, binding_request, new_transaction_id, transaction_id};

/// The first two bytes of a STUN Binding success response (RFC 8489 §5).
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceEvent {
    /// The controlling side nominated this pair: QUIC can start on it.
    Nominated { local: SocketAddr, remote: SocketAddr },
    /// Every pair failed, or a working path was lost.
    Disconnected,
    /// The nominated pair has not answered a consent check for `silent_for` (RFC 7675
    /// liveness): repair the path; sending on it is still allowed.
    PathLost { local: SocketAddr, remote: SocketAddr, silent_for: Duration },
    /// The nominated pair answers again after `PathLost`.
    PathRegained { local: SocketAddr, remote: SocketAddr },
    /// Consent on the nominated pair expired (RFC 7675 §5.1): stop sending on it.
    ConsentExpired { local: SocketAddr, remote: SocketAddr, silent_for: Duration },
    /// A STUN server's answer to [`IceHandle::regather`]: our mapping as it is now.
    Reflexive { server: SocketAddr, mapped: SocketAddr },
}

/// A command from the session: a candidate added after the checks started (trickled, or held
/// back until the relay phase), a regather, or a datagram to open our NAT.
enum Late {
    Local(Candidate),
    Remote(Candidate),
    Regather(Vec<SocketAddr>),
    Open(SocketAddr),
}

pub struct IceHandle {
    pub events: mpsc::UnboundedReceiver<IceEvent>,
    late: mpsc::UnboundedSender<Late>,
    pub log: Arc<Mutex<CheckLog>>,
    /// Per remote address: our address as that peer saw it (XOR-MAPPED-ADDRESS of its answers to
    /// our checks), e.g. to tell that it reached us through a router's port mapping.
    seen_as: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
}

impl IceHandle {
    /// One of ours, e.g. the relayed candidate once direct paths had their chance.
    pub fn add_local(&self, c: Candidate) {
        let _ = self.late.send(Late::Local(c));
    }

    /// One of the peer's.
    pub fn add_remote(&self, c: Candidate) {
        let _ = self.late.send(Late::Remote(c));
    }

    /// Asks each STUN server again for our mapping (a NAT may have given us a new one);
    /// answers come back as [`IceEvent::Reflexive`].
    pub fn regather(&self, servers: Vec<SocketAddr>) {
        let _ = self.late.send(Late::Regather(servers));
    }

    /// Our address as the peer at `remote` saw it, from its answers to our checks.
    pub fn seen_as(&self, remote: SocketAddr) -> Option<SocketAddr> {
        self.seen_as.lock().ok().and_then(|m| m.get(&remote).copied())
    }

    /// Sends one datagram (an unauthenticated Binding request, which the peer's agent ignores) to
    /// `to` from the shared socket: our NAT then lets `to`'s packets in (a peer that re-punched
    /// from a new address, whose checks our filter would drop). Needed because the agent does not
    /// check a trickled candidate once a pair is nominated.
    pub fn open_toward(&self, to: SocketAddr) {
        let _ = self.late.send(Late::Open(to));
    }

    pub fn checks(&self) -> Vec<crate::ice::checks::CheckRecord> {
        self.log.lock().map(|l| l.records()).unwrap_or_default()
    }
}

/// Starts the agent's driver task; it ends when every handle is dropped.
pub fn spawn(
    agent: IceAgent,
    socket: Arc<UdpSocket>,
    mut stun: mpsc::UnboundedReceiver<StunDatagram>,
    relay: Option<Arc<RelayLink>>,
    consent_config: ConsentConfig,
) -> IceHandle {
    let (events, ev_rx) = mpsc::unbounded_channel();
    let (late_tx, mut commands) = mpsc::unbounded_channel::<Late>();
    let log = Arc::new(Mutex::new(CheckLog::default()));
    let seen_as = Arc::new(Mutex::new(HashMap::new()));
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut d = Driver {
        agent,
        socket,
        relay,
        port,
        consent_config,
        events,
        log: log.clone(),
        seen_as: seen_as.clone(),
        arrived_on: HashMap::new(),
        last_state: IceConnectionState::New,
        consent: None,
        asked: HashMap::new(),
    };
    // The loop of `net::udp::drive`, in str0m's order: the timers due now (the agent makes its
    // checks there), poll_transmit, poll_event, poll_timeout, then wait on a datagram, a command
    // or the timer, and hand it over.
    tokio::spawn(async move {
        loop {
            let now = Instant::now();
            d.handle_timeout(now);
            d.poll_transmit(now).await;
            d.poll_event(now);
            let wake = d.poll_timeout(now);
            tokio::select! {
                datagram = stun.recv() => match datagram {
                    Some(datagram) => d.handle_input(datagram, Instant::now()),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => d.handle_command(command).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    });
    IceHandle { events: ev_rx, late: late_tx, log, seen_as }
}

/// The agent on the shared socket, with what it needs around it: consent on the nominated pair,
/// the relay link's timers, the check log, and the regather questions in flight.
struct Driver {
    agent: IceAgent,
    socket: Arc<UdpSocket>,
    relay: Option<Arc<RelayLink>>,
    port: u16,
    consent_config: ConsentConfig,
    events: mpsc::UnboundedSender<IceEvent>,
    log: Arc<Mutex<CheckLog>>,
    seen_as: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    /// The address a datagram from `from` arrived on, to match our host candidates.
    arrived_on: HashMap<SocketAddr, SocketAddr>,
    last_state: IceConnectionState,
    /// Consent on the nominated pair, once there is one.
    consent: Option<(Consent, SocketAddr, SocketAddr)>,
    /// Binding requests of a regather, by transaction id: only their answers are taken.
    asked: HashMap<[u8; 12], SocketAddr>,
}

impl Driver {
    /// Runs the agent's, consent's and the relay link's timers that are due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        if let Some((c, local, remote)) = self.consent.as_mut() {
            let (local, remote) = (*local, *remote);
            let answered = self.agent.nominated_pair_responses_received().and_then(|n| c.handle_responses(now, n));
            for ev in answered.into_iter().chain(c.handle_timeout(now)) {
                let ev = match ev {
                    ConsentEvent::Lost { silent_for } => IceEvent::PathLost { local, remote, silent_for },
                    ConsentEvent::Regained => IceEvent::PathRegained { local, remote },
                    ConsentEvent::Expired { silent_for } => IceEvent::ConsentExpired { local, remote, silent_for },
                };
                tracing::info!(?ev, "consent");
                let _ = self.events.send(ev);
            }
        }
        if let Some(r) = &self.relay {
            r.handle_timeout(now);
        }
    }

    /// Sends what the agent asks: from our relayed candidate through the relay link, else from
    /// the shared socket.
    async fn poll_transmit(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_transmit() {
            if let Ok(mut l) = self.log.lock() {
                l.on_send(t.source, t.destination, &t.contents, now);
            }
            match &self.relay {
                Some(r) if r.relayed() == Some(t.source) => r.send(t.destination, &t.contents),
                _ => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!(dest = %t.destination, "ICE send failed: {e}");
                    }
                }
            }
        }
    }

    /// Turns the agent's events into [`IceEvent`]s: a nomination (which starts consent on the
    /// pair) and the agent giving up.
    fn poll_event(&mut self, now: Instant) {
        while let Some(ev) = self.agent.poll_event() {
            match ev {
                IceAgentEvent::NominatedSend { source, destination, .. } => {
                    if let Ok(mut l) = self.log.lock() {
                        l.nominate(source, destination);
                    }
                    tracing::info!(%source, %destination, "ICE nominated a pair");
                    if let Some(r) = self.relay.as_ref().filter(|r| r.relayed() == Some(source)) {
                        r.route(destination);
                    }
                    // A new selection starts fresh consent (RFC 7675 §5.1: it just answered).
                    let mut c = Consent::new(self.consent_config, now);
                    if let Some(n) = self.agent.nominated_pair_responses_received() {
                        c.handle_responses(now, n);
                    }
                    self.consent = Some((c, source, destination));
                    let _ = self.events.send(IceEvent::Nominated { local: source, remote: destination });
                }
                IceAgentEvent::IceConnectionStateChange(s) => {
                    tracing::debug!(?s, "ICE state");
                    if s == IceConnectionState::Disconnected && self.last_state != IceConnectionState::Disconnected {
                        let _ = self.events.send(IceEvent::Disconnected);
                    }
                    self.last_state = s;
                }
                other => tracing::trace!(?other, "ICE event"),
            }
        }
    }

    /// When to run the timers next: the earliest of the agent's, the relay link's and consent's
    /// (at most 500 ms away while the agent has nothing planned).
    fn poll_timeout(&mut self, now: Instant) -> Instant {
        let relay_wake = self.relay.as_ref().and_then(|r| r.poll_timeout());
        let wake = self.agent.poll_timeout().unwrap_or(now + Duration::from_millis(500));
        let wake = relay_wake.map_or(wake, |r| r.min(wake));
        self.consent.as_ref().and_then(|(c, ..)| c.poll_timeout()).map_or(wake, |c| c.min(wake))
    }

    /// A STUN datagram the mux set aside: an answer to a regather, or a check (or its answer)
    /// for the agent.
    fn handle_input(&mut self, d: StunDatagram, now: Instant) {
        if let Some(server) = transaction_id(&d.bytes).and_then(|id| self.asked.remove(&id)) {
            if d.to.is_none()
                && d.from == server
                && let Some(mapped) = BindingResponse::parse(&d.bytes).ok().and_then(|r| r.reflexive())
            {
                let _ = self.events.send(IceEvent::Reflexive { server, mapped });
            }
            return;
        }
        let port = self.port;
        let dest = d.to.unwrap_or_else(|| {
            *self
                .arrived_on
                .entry(d.from)
                .or_insert_with(|| SocketAddr::new(local_ip_towards(d.from).unwrap_or(d.from.ip()), port))
        });
        let Ok(message) = StunMessage::parse(&d.bytes) else { return };
        if let Ok(mut l) = self.log.lock() {
            l.on_recv(&d.bytes, now);
        }
        if d.bytes.starts_with(&BINDING_SUCCESS)
            && let Some(mapped) = BindingResponse::parse(&d.bytes).ok().and_then(|r| r.reflexive())
            && let Ok(mut m) = self.seen_as.lock()
        {
            m.insert(d.from, mapped);
        }
        let packet = StunPacket { proto: Protocol::Udp, source: d.from, destination: dest, message };
        if self.agent.accepts_message(&packet.message) {
            self.agent.handle_packet(now, packet);
        }
    }

    /// What the session asks (see [`IceHandle`]).
    async fn handle_command(&mut self, command: Late) {
        match command {
            Late::Local(c) => {
                self.agent.add_local_candidate(c);
            }
            Late::Remote(c) => self.agent.add_remote_candidate(c),
            Late::Regather(servers) => {
                // Old questions are void: the mapping may have changed since.
                self.asked.clear();
                for server in servers {
                    let id = new_transaction_id();
                    self.asked.insert(id, server);
                    if let Err(e) = self.socket.send_to(&binding_request(id), server).await {
                        tracing::debug!(%server, "regather: {e}");
                    }
                }
            }
            Late::Open(to) => {
                if let Err(e) = self.socket.send_to(&binding_request(new_transaction_id()), to).await {
                    tracing::debug!(%to, "opening toward the peer: {e}");
                }
            }
        }
    }
}
