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

/// A candidate added after the checks started (trickled, or held back until the relay phase).
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
    mut agent: IceAgent,
    socket: Arc<UdpSocket>,
    mut stun: mpsc::UnboundedReceiver<StunDatagram>,
    relay: Option<Arc<RelayLink>>,
    consent_config: ConsentConfig,
) -> IceHandle {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (late_tx, mut late_rx) = mpsc::unbounded_channel::<Late>();
    let log = Arc::new(Mutex::new(CheckLog::default()));
    let task_log = log.clone();
    let seen_as = Arc::new(Mutex::new(HashMap::new()));
    let task_seen_as = seen_as.clone();
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    tokio::spawn(async move {
        // The address a datagram from `from` arrived on, to match our host candidates.
        let mut arrived_on: HashMap<SocketAddr, SocketAddr> = HashMap::new();
        let mut last_state = IceConnectionState::New;
        // Consent on the nominated pair, once there is one.
        let mut consent: Option<(Consent, SocketAddr, SocketAddr)> = None;
        // Binding requests of a regather, by transaction id: only their answers are taken.
        let mut asked: HashMap<[u8; 12], SocketAddr> = HashMap::new();
        loop {
            let now = Instant::now();
            agent.handle_timeout(now);
            if let Some((c, local, remote)) = consent.as_mut() {
                let (local, remote) = (*local, *remote);
                let answered = agent.nominated_pair_responses_received().and_then(|n| c.handle_responses(now, n));
                for ev in answered.into_iter().chain(c.handle_timeout(now)) {
                    let ev = match ev {
                        ConsentEvent::Lost { silent_for } => IceEvent::PathLost { local, remote, silent_for },
                        ConsentEvent::Regained => IceEvent::PathRegained { local, remote },
                        ConsentEvent::Expired { silent_for } => IceEvent::ConsentExpired { local, remote, silent_for },
                    };
                    tracing::info!(?ev, "consent");
                    let _ = ev_tx.send(ev);
                }
            }
            if let Some(r) = &relay {
                r.handle_timeout(now);
            }
            while let Some(t) = agent.poll_transmit() {
                if let Ok(mut l) = task_log.lock() {
                    l.on_send(t.source, t.destination, &t.contents, now);
                }
                match &relay {
                    Some(r) if r.relayed() == Some(t.source) => r.send(t.destination, &t.contents),
                    _ => {
                        if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                            tracing::debug!(dest = %t.destination, "ICE send failed: {e}");
                        }
                    }
                }
            }
            while let Some(ev) = agent.poll_event() {
                match ev {
                    IceAgentEvent::NominatedSend { source, destination, .. } => {
                        if let Ok(mut l) = task_log.lock() {
                            l.nominate(source, destination);
                        }
                        tracing::info!(%source, %destination, "ICE nominated a pair");
                        if let Some(r) = relay.as_ref().filter(|r| r.relayed() == Some(source)) {
                            r.route(destination);
                        }
                        // A new selection starts fresh consent (RFC 7675 §5.1: it just answered).
                        let mut c = Consent::new(consent_config, now);
                        if let Some(n) = agent.nominated_pair_responses_received() {
                            c.handle_responses(now, n);
                        }
                        consent = Some((c, source, destination));
                        let _ = ev_tx.send(IceEvent::Nominated { local: source, remote: destination });
                    }
                    IceAgentEvent::IceConnectionStateChange(s) => {
                        tracing::debug!(?s, "ICE state");
                        if s == IceConnectionState::Disconnected && last_state != IceConnectionState::Disconnected {
                            let _ = ev_tx.send(IceEvent::Disconnected);
                        }
                        last_state = s;
                    }
                    other => tracing::trace!(?other, "ICE event"),
                }
            }
            let relay_wake = relay.as_ref().and_then(|r| r.poll_timeout());
            let wake = agent.poll_timeout().unwrap_or(now + Duration::from_millis(500));
            let wake = relay_wake.map_or(wake, |r| r.min(wake));
            let wake = consent.as_ref().and_then(|(c, ..)| c.poll_timeout()).map_or(wake, |c| c.min(wake));
            tokio::select! {
                d = stun.recv() => {
                    let Some(d) = d else { break };
                    let now = Instant::now();
                    if let Some(server) = transaction_id(&d.bytes).and_then(|id| asked.remove(&id)) {
                        if d.to.is_none() && d.from == server
                            && let Some(mapped) = BindingResponse::parse(&d.bytes).ok().and_then(|r| r.reflexive())
                        {
                            let _ = ev_tx.send(IceEvent::Reflexive { server, mapped });
                        }
                        continue;
                    }
                    let dest = d.to.unwrap_or_else(|| *arrived_on.entry(d.from).or_insert_with(|| {
                        SocketAddr::new(local_ip_towards(d.from).unwrap_or(d.from.ip()), port)
                    }));
                    if let Ok(message) = StunMessage::parse(&d.bytes) {
                        if let Ok(mut l) = task_log.lock() {
                            l.on_recv(&d.bytes, now);
                        }
                        if d.bytes.starts_with(&BINDING_SUCCESS)
                            && let Some(mapped) = BindingResponse::parse(&d.bytes).ok().and_then(|r| r.reflexive())
                            && let Ok(mut m) = task_seen_as.lock()
                        {
                            m.insert(d.from, mapped);
                        }
                        let packet = StunPacket { proto: Protocol::Udp, source: d.from, destination: dest, message };
                        if agent.accepts_message(&packet.message) {
                            agent.handle_packet(now, packet);
                        }
                    }
                }
                c = late_rx.recv() => match c {
                    Some(Late::Local(c)) => {
                        agent.add_local_candidate(c);
                    }
                    Some(Late::Remote(c)) => agent.add_remote_candidate(c),
                    Some(Late::Regather(servers)) => {
                        // Old questions are void: the mapping may have changed since.
                        asked.clear();
                        for server in servers {
                            let id = new_transaction_id();
                            asked.insert(id, server);
                            if let Err(e) = socket.send_to(&binding_request(id), server).await {
                                tracing::debug!(%server, "regather: {e}");
                            }
                        }
                    }
                    Some(Late::Open(to)) => {
                        if let Err(e) = socket.send_to(&binding_request(new_transaction_id()), to).await {
                            tracing::debug!(%to, "opening toward the peer: {e}");
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    });
    IceHandle { events: ev_rx, late: late_tx, log, seen_as }
}
