//! Server candidates for the call, from natkit's own STUN and TURN client cores over the call's
//! media socket (RFC 8445 §5.1.1): a server-reflexive candidate per STUN server (Binding), and a
//! relayed candidate from a TURN allocation (RFC 8656), through which str0m's datagrams for
//! that candidate travel as Send indications, with permissions made as new peers appear.
//!
//! Sans-IO like the cores it drives: datagrams from our servers go in with `now`; datagrams for
//! them, new candidates and relayed data come out.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::Candidate;

use crate::stun::transaction::{Reliability, Retransmit};
use crate::turn::client::{Auth, ClientConfig, Event, Request, RequestId, TurnClient};
use crate::turn::credentials::Credentials;

/// What the driver must act on.
#[derive(Debug)]
pub enum GatherEvent {
    /// A new local candidate to add to ICE and trickle.
    Candidate(Candidate),
    /// A server did not give its candidate; the call goes on without it.
    Failed(String),
    /// A datagram from `peer` relayed by the TURN server to our `relayed` address.
    Relayed { peer: SocketAddr, relayed: SocketAddr, data: Vec<u8> },
}

struct StunServer {
    addr: SocketAddr,
    client: TurnClient,
    id: RequestId,
}

/// Allocation lifetime we ask for; refreshed at half of what the server grants.
const LIFETIME: u32 = 600;
/// Permissions last 300 s (RFC 8656 §9); refresh well before.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);

struct Relay {
    addr: SocketAddr,
    client: TurnClient,
    allocate: Option<RequestId>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    permitted: HashSet<IpAddr>,
    permissions_at: Option<Instant>,
}

pub struct Gatherer {
    base: SocketAddr,
    stun: Vec<StunServer>,
    relay: Option<Relay>,
    events: VecDeque<GatherEvent>,
}

fn config(credentials: Option<Credentials>) -> ClientConfig {
    ClientConfig {
        credentials,
        reliability: Reliability::Unreliable(Retransmit::default()),
        request_timeout: Duration::from_secs(8),
        pad_channel_data: false,
    }
}

impl Gatherer {
    /// `base` is the host address the socket sends from (the candidates' base).
    pub fn new(base: SocketAddr, stun: &[SocketAddr], turn: Option<(SocketAddr, Credentials)>, now: Instant) -> Self {
        let stun = stun
            .iter()
            .map(|&addr| {
                let mut client = TurnClient::new(config(None));
                let id = client.request(Request::Binding, Auth::Anonymous, now);
                StunServer { addr, client, id }
            })
            .collect();
        let relay = turn.map(|(addr, creds)| {
            let mut client = TurnClient::new(config(Some(creds)));
            let id = client.request(
                Request::Allocate { lifetime: Some(LIFETIME), ipv6: addr.is_ipv6() },
                Auth::Credentials,
                now,
            );
            Relay {
                addr,
                client,
                allocate: Some(id),
                relayed: None,
                refresh_at: None,
                permitted: HashSet::new(),
                permissions_at: None,
            }
        });
        Gatherer { base, stun, relay, events: VecDeque::new() }
    }

    /// Whether a datagram from `from` is for us (a STUN or TURN server we talk to).
    pub fn owns(&self, from: SocketAddr) -> bool {
        self.relay.as_ref().is_some_and(|r| r.addr == from) || self.stun.iter().any(|s| s.addr == from)
    }

    /// Our relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relay.as_ref().and_then(|r| r.relayed)
    }

    pub fn handle_input(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        if let Some(r) = self.relay.as_mut().filter(|r| r.addr == from) {
            r.client.handle_input(bytes, now);
        } else if let Some(s) = self.stun.iter_mut().find(|s| s.addr == from) {
            s.client.handle_input(bytes, now);
        }
        self.collect(now);
    }

    /// Sends `data` to `peer` through the TURN allocation, making a permission first if needed.
    pub fn send_relayed(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        let Some(r) = self.relay.as_mut() else { return };
        if r.permitted.insert(peer.ip()) {
            // The first packets may beat the permission and be dropped; ICE retransmits.
            r.client.request(Request::CreatePermission { peers: vec![peer] }, Auth::Credentials, now);
            r.permissions_at.get_or_insert(now + PERMISSION_REFRESH);
        }
        r.client.send_indication(peer, data);
    }

    /// Next datagram for one of our servers.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some(r) = self.relay.as_mut()
            && let Some(b) = r.client.poll_transmit(now)
        {
            return Some((r.addr, b));
        }
        self.stun.iter_mut().find_map(|s| s.client.poll_transmit(now).map(|b| (s.addr, b)))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let relay = self.relay.as_ref().map(|r| [r.client.poll_timeout(), r.refresh_at, r.permissions_at]);
        self.stun.iter().filter_map(|s| s.client.poll_timeout()).chain(relay.into_iter().flatten().flatten()).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.stun {
            s.client.handle_timeout(now);
        }
        if let Some(r) = self.relay.as_mut() {
            r.client.handle_timeout(now);
            if r.refresh_at.is_some_and(|t| now >= t) {
                r.refresh_at = None;
                r.client.request(Request::Refresh { lifetime: LIFETIME }, Auth::Credentials, now);
            }
            if r.permissions_at.is_some_and(|t| now >= t) {
                r.permissions_at = Some(now + PERMISSION_REFRESH);
                let peers: Vec<SocketAddr> = r.permitted.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
                r.client.request(Request::CreatePermission { peers }, Auth::Credentials, now);
            }
        }
        self.collect(now);
    }

    pub fn poll_event(&mut self) -> Option<GatherEvent> {
        self.events.pop_front()
    }

    fn collect(&mut self, now: Instant) {
        for s in &mut self.stun {
            while let Some(ev) = s.client.poll_event() {
                if let Event::Response { id, result, .. } = ev
                    && id == s.id
                {
                    match result.map(|ok| ok.mapped) {
                        Ok(Some(mapped)) => match Candidate::server_reflexive(mapped, self.base, "udp") {
                            Ok(c) => self.events.push_back(GatherEvent::Candidate(c)),
                            Err(e) => self.events.push_back(GatherEvent::Failed(format!("STUN {}: {e}", s.addr))),
                        },
                        Ok(None) => self.events.push_back(GatherEvent::Failed(format!(
                            "STUN {}: no mapped address in the answer",
                            s.addr
                        ))),
                        Err(e) => self.events.push_back(GatherEvent::Failed(format!("STUN {}: {e}", s.addr))),
                    }
                }
            }
        }
        let Some(r) = self.relay.as_mut() else { return };
        while let Some(ev) = r.client.poll_event() {
            match ev {
                Event::Response { id, result, .. } if Some(id) == r.allocate => {
                    r.allocate = None;
                    match result {
                        Ok(ok) => match ok.relayed {
                            Some(relayed) => {
                                r.relayed = Some(relayed);
                                let granted = ok.lifetime.unwrap_or(LIFETIME).max(60);
                                r.refresh_at = Some(now + Duration::from_secs(u64::from(granted) / 2));
                                match Candidate::relayed(relayed, self.base, "udp") {
                                    Ok(c) => self.events.push_back(GatherEvent::Candidate(c)),
                                    Err(e) => {
                                        self.events.push_back(GatherEvent::Failed(format!("TURN {}: {e}", r.addr)))
                                    }
                                }
                            }
                            None => self.events.push_back(GatherEvent::Failed(format!(
                                "TURN {}: the Allocate success has no XOR-RELAYED-ADDRESS",
                                r.addr
                            ))),
                        },
                        Err(e) => {
                            self.events.push_back(GatherEvent::Failed(format!("TURN {}: Allocate failed: {e}", r.addr)))
                        }
                    }
                }
                Event::Response { result: Err(e), .. } => {
                    tracing::warn!("TURN {}: {e}", r.addr);
                }
                Event::Response { .. } => {}
                Event::Data { peer, data, .. } => {
                    if let Some(relayed) = r.relayed {
                        self.events.push_back(GatherEvent::Relayed { peer, relayed, data });
                    }
                }
            }
        }
    }
}
