//! Server candidates (RFC 8445 §5.1.1) over a session's own socket, from natkit's STUN and TURN
//! client cores: a server-reflexive candidate per STUN server (Binding), and a relayed candidate
//! from a TURN allocation (RFC 8656). Both `call` and `punch` use it. Data for a peer reached
//! through the relay leaves as a Send indication (§10) once the peer's permission (§9) is made,
//! or as ChannelData (§12) once a channel is bound to the peer (punch binds one for the QUIC
//! path); data from peers comes back out of [`Gatherer::handle_input`].
//!
//! Sans-IO like the cores it drives: datagrams from our servers go in with `now`; datagrams for
//! them, new candidates and relayed data come out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use is::Candidate;

use crate::stun::transaction::{Reliability, Retransmit};
use crate::turn::client::{Auth, ClientConfig, Event, Request, RequestId, TurnClient};
use crate::turn::credentials::Credentials;
use crate::turn::server::Family;

/// What the driver must act on.
#[derive(Debug)]
pub enum GatherEvent {
    /// A new local candidate to add to ICE and trickle.
    Candidate(Candidate),
    /// A server did not give its candidate; the session goes on without it.
    Failed(String),
}

/// A datagram from `peer` relayed by the TURN server to our `relayed` address.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed {
    pub peer: SocketAddr,
    pub relayed: SocketAddr,
    pub data: Vec<u8>,
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
/// Channel bindings last 600 s (RFC 8656 §12); refresh well before.
const CHANNEL_REFRESH: Duration = Duration::from_secs(300);
/// The first channel number a client may use (RFC 8656 §12).
const FIRST_CHANNEL: u16 = 0x4000;
/// The last: 0x5000–0x7FFF are reserved (RFC 8656 §12).
const LAST_CHANNEL: u16 = 0x4FFF;

/// A channel to one peer: asked for, then bound once the server says so.
struct Channel {
    number: u16,
    bound: bool,
}

struct Relay {
    addr: SocketAddr,
    client: TurnClient,
    allocate: Option<RequestId>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    permitted: HashSet<IpAddr>,
    permissions_at: Option<Instant>,
    /// Datagrams for a peer whose first permission is on its way: a Send indication that
    /// beats it would be dropped by the server (RFC 8656 §10.2).
    waiting: HashMap<IpAddr, Vec<(SocketAddr, Vec<u8>)>>,
    permission_requests: HashMap<RequestId, IpAddr>,
    channels: HashMap<SocketAddr, Channel>,
    channel_requests: HashMap<RequestId, SocketAddr>,
    channels_at: Option<Instant>,
    next_channel: u16,
}

/// Most datagrams held per peer while its permission is created (ICE checks, a DTLS flight).
const MAX_WAITING: usize = 64;

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
                Request::Allocate { lifetime: Some(LIFETIME), family: Family::of(&addr) },
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
                waiting: HashMap::new(),
                permission_requests: HashMap::new(),
                channels: HashMap::new(),
                channel_requests: HashMap::new(),
                channels_at: None,
                next_channel: FIRST_CHANNEL,
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

    /// The TURN server, if one was given.
    pub fn turn_server(&self) -> Option<SocketAddr> {
        self.relay.as_ref().map(|r| r.addr)
    }

    /// Offers a datagram from one of our servers; data a peer sent through the relay comes back.
    pub fn handle_input(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Option<Relayed> {
        if let Some(r) = self.relay.as_mut().filter(|r| r.addr == from) {
            r.client.handle_input(bytes, now);
        } else if let Some(s) = self.stun.iter_mut().find(|s| s.addr == from) {
            s.client.handle_input(bytes, now);
        }
        self.collect(now)
    }

    /// Binds a channel to `peer` (RFC 8656 §11), so data to and from it travels as ChannelData
    /// with 4 bytes of overhead instead of a 36-byte indication. Data keeps going as Send
    /// indications until the server confirms.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) {
        let Some(r) = self.relay.as_mut() else { return };
        if r.channels.contains_key(&peer) {
            return;
        }
        let number = r.next_channel;
        if number > LAST_CHANNEL {
            return;
        }
        r.next_channel += 1;
        let id = r.client.request(Request::ChannelBind { channel: number, peer }, Auth::Credentials, now);
        r.channel_requests.insert(id, peer);
        r.channels.insert(peer, Channel { number, bound: false });
        // A channel binding also installs the peer's permission (§11.2).
        r.permitted.insert(peer.ip());
        r.channels_at.get_or_insert(now + CHANNEL_REFRESH);
    }

    /// The channel bound to `peer`, once the server confirmed it (punch frames GSO batches to it).
    pub fn bound_channel(&self, peer: SocketAddr) -> Option<u16> {
        let r = self.relay.as_ref()?;
        r.channels.get(&peer).filter(|c| c.bound).map(|c| c.number)
    }

    /// Every bound channel and its peer, into `out` (at most its length; returns how many).
    pub fn bound_channels(&self, out: &mut [(u16, SocketAddr)]) -> usize {
        let Some(r) = self.relay.as_ref() else { return 0 };
        let bound = r.channels.iter().filter(|(_, c)| c.bound).map(|(p, c)| (c.number, *p));
        out.iter_mut().zip(bound).map(|(slot, b)| *slot = b).count()
    }

    /// Sends `data` to `peer` through the TURN allocation: over its channel when bound, else in a
    /// Send indication, making a permission first if needed.
    pub fn send_relayed(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        let Some(r) = self.relay.as_mut() else { return };
        if let Some(c) = r.channels.get(&peer).filter(|c| c.bound) {
            r.client.send_channel_data(c.number, data);
            return;
        }
        if r.permitted.insert(peer.ip()) {
            let id = r.client.request(Request::CreatePermission { peers: vec![peer] }, Auth::Credentials, now);
            r.permission_requests.insert(id, peer.ip());
            r.waiting.insert(peer.ip(), Vec::new());
            r.permissions_at.get_or_insert(now + PERMISSION_REFRESH);
        }
        match r.waiting.get_mut(&peer.ip()) {
            Some(q) if q.len() < MAX_WAITING => q.push((peer, data.to_vec())),
            Some(_) => tracing::debug!("dropped a datagram for {peer}: its TURN permission is still pending"),
            None => r.client.send_indication(peer, data),
        }
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
        let relay =
            self.relay.as_ref().map(|r| [r.client.poll_timeout(), r.refresh_at, r.permissions_at, r.channels_at]);
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
            if r.channels_at.is_some_and(|t| now >= t) {
                r.channels_at = Some(now + CHANNEL_REFRESH);
                for (peer, c) in &r.channels {
                    let id = r.client.request(
                        Request::ChannelBind { channel: c.number, peer: *peer },
                        Auth::Credentials,
                        now,
                    );
                    r.channel_requests.insert(id, *peer);
                }
            }
        }
        // Data only arrives through handle_input.
        let _ = self.collect(now);
    }

    pub fn poll_event(&mut self) -> Option<GatherEvent> {
        self.events.pop_front()
    }

    fn collect(&mut self, now: Instant) -> Option<Relayed> {
        let mut relayed_data = None;
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
        let r = self.relay.as_mut()?;
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
                Event::Response { id, result, .. } if r.permission_requests.contains_key(&id) => {
                    let ip = r.permission_requests.remove(&id).unwrap_or(IpAddr::from([0, 0, 0, 0]));
                    let held = r.waiting.remove(&ip).unwrap_or_default();
                    match result {
                        Ok(_) => {
                            for (peer, data) in held {
                                r.client.send_indication(peer, &data);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("TURN {}: permission for {ip} refused: {e}", r.addr);
                            // Let a later datagram try again.
                            r.permitted.remove(&ip);
                        }
                    }
                }
                Event::Response { id, result, .. } if r.channel_requests.contains_key(&id) => {
                    let Some(peer) = r.channel_requests.remove(&id) else { continue };
                    match result {
                        Ok(_) => {
                            if let Some(c) = r.channels.get_mut(&peer) {
                                c.bound = true;
                            }
                        }
                        Err(e) => {
                            // Indications keep working; a later bind_channel may try again.
                            tracing::warn!("TURN {}: channel to {peer} refused: {e}", r.addr);
                            r.channels.remove(&peer);
                        }
                    }
                }
                Event::Response { result: Err(e), .. } => {
                    tracing::warn!("TURN {}: {e}", r.addr);
                }
                Event::Response { .. } => {}
                Event::Data { peer, data, .. } => {
                    if let Some(relayed) = r.relayed {
                        // One datagram in carries at most one Data indication or ChannelData.
                        relayed_data = Some(Relayed { peer, relayed, data });
                    }
                }
            }
        }
        relayed_data
    }
}

#[cfg(test)]
mod tests {
    //! The gatherer against natkit's own STUN/TURN server core, in memory on a fake clock.

    use std::collections::HashMap;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::net::transport::Transport;
    use crate::turn::channel_data::{PEER_HEADROOM, PEER_TAILROOM};
    use crate::turn::server::{Family, FiveTuple, RelayId, RelayOpenError, RelayPorts, Server, ServerConfig, Target};
    use str0m::CandidateKind;

    /// One relayed port, 198.51.100.1:50000, that exists only as an id.
    struct OnePort;

    impl RelayPorts for OnePort {
        fn open(&mut self, _: Family) -> Result<(RelayId, SocketAddr), RelayOpenError> {
            Ok((RelayId(1), "198.51.100.1:50000".parse().unwrap()))
        }
        fn close(&mut self, _: RelayId) {}
    }

    const BASE: &str = "10.0.0.2:5000";
    const SERVER: &str = "198.51.100.1:3478";

    fn server(now: Instant) -> Server {
        let cfg = ServerConfig {
            realm: "lab".into(),
            users: HashMap::from([("alice".into(), "wonderland".into())]),
            ..ServerConfig::default()
        };
        Server::new(cfg, Box::new(OnePort), now, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    /// Carries the gatherer's datagrams to the server and the answers back; returns what the
    /// server sent to peers.
    fn exchange(g: &mut Gatherer, s: &mut Server, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut to_peers = Vec::new();
        while let Some((to, bytes)) = g.poll_transmit(now) {
            let from = FiveTuple { transport: Transport::Udp, local: to, remote: BASE.parse().unwrap() };
            let Some(t) = s.handle_client(from, &bytes, now) else { continue };
            let (target, payload) = (t.target, t.payload.to_vec());
            match target {
                Target::Client(c) => {
                    let _ = g.handle_input(c.local, &payload, now);
                }
                Target::Peer { peer, .. } => to_peers.push((peer, payload)),
            }
        }
        to_peers
    }

    #[test]
    fn gathers_a_relay_candidate_and_relays_both_ways_through_natkit_turn_core() {
        let now = Instant::now();
        let mut s = server(now);
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let creds = Credentials { username: "alice".into(), password: "wonderland".into() };
        let mut g = Gatherer::new(BASE.parse().unwrap(), &[], Some((server_addr, creds)), now);
        // 401 with realm and nonce, then the signed Allocate.
        for _ in 0..3 {
            exchange(&mut g, &mut s, now);
        }
        let Some(GatherEvent::Candidate(c)) = g.poll_event() else { panic!("no relay candidate") };
        assert_eq!(c.kind(), CandidateKind::Relayed);
        assert_eq!(c.addr(), "198.51.100.1:50000".parse().unwrap());
        assert_eq!(g.relayed(), Some(c.addr()));
        assert!(g.owns(server_addr) && !g.owns("203.0.113.9:7000".parse().unwrap()));

        // Out: a permission, then a Send indication the server relays to the peer.
        let peer: SocketAddr = "203.0.113.9:7000".parse().unwrap();
        g.send_relayed(peer, b"hello peer", now);
        let out = exchange(&mut g, &mut s, now);
        assert_eq!(out, vec![(peer, b"hello peer".to_vec())]);

        // In: the peer answers on the relayed port; a Data indication comes back to us.
        let mut buf = vec![0u8; PEER_HEADROOM + 5 + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + 5].copy_from_slice(b"hi yo");
        let t = s.handle_peer(RelayId(1), peer, &mut buf, 5, now).expect("relayed to us");
        let Target::Client(c) = t.target else { panic!("not to the client") };
        let payload = t.payload.to_vec();
        let got = g.handle_input(c.local, &payload, now);
        assert_eq!(
            got,
            Some(Relayed { peer, relayed: "198.51.100.1:50000".parse().unwrap(), data: b"hi yo".to_vec() })
        );
    }

    #[test]
    fn stun_binding_gives_a_server_reflexive_candidate_and_wrong_credentials_a_failure() {
        let now = Instant::now();
        let mut s = server(now);
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let creds = Credentials { username: "alice".into(), password: "not-it".into() };
        let mut g = Gatherer::new(BASE.parse().unwrap(), &[server_addr], None, now);
        exchange(&mut g, &mut s, now);
        let Some(GatherEvent::Candidate(c)) = g.poll_event() else { panic!("no srflx candidate") };
        assert_eq!(c.kind(), CandidateKind::ServerReflexive);
        assert_eq!(c.addr(), BASE.parse().unwrap(), "no NAT in memory: the mapped address is the base");

        let mut g = Gatherer::new(BASE.parse().unwrap(), &[], Some((server_addr, creds)), now);
        for _ in 0..4 {
            exchange(&mut g, &mut s, now);
        }
        match g.poll_event() {
            Some(GatherEvent::Failed(why)) => assert!(why.contains("Allocate failed") && why.contains("401"), "{why}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn an_unanswered_server_times_out_into_a_failure() {
        let start = Instant::now();
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let mut g = Gatherer::new(BASE.parse().unwrap(), &[server_addr], None, start);
        let mut now = start;
        while let Some(t) = g.poll_timeout() {
            while g.poll_transmit(now).is_some() {}
            now = t;
            g.handle_timeout(now);
            if now > start + Duration::from_secs(60) {
                break;
            }
        }
        assert!(matches!(g.poll_event(), Some(GatherEvent::Failed(why)) if why.contains("STUN")));
    }
}
