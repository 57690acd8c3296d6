//! The steps of `turn-alloc` as a sans-IO script over the TURN client core (RFC 8656):
//! resolve, connect, Binding (RFC 8489 §3), an unauthenticated Allocate that must be
//! challenged (§9.2), the authenticated Allocate (§7.1), a second allocation as the data
//! peer, CreatePermission (§9), data with Send/Data indications (§11), ChannelBind and
//! ChannelData (§12), the quality test, the peer audit, Refresh (§7.2, with the
//! optional stale-nonce check, RFC 8489 §9.2.3) and the deallocation.
//!
//! Like quinn-proto's `Endpoint::handle` returning effects: [`Scenario::poll_action`]
//! says what the driver must do next (a request on one of the two connections, a data
//! round trip, a wait), the driver does it and hands the outcome to
//! [`Scenario::handle_input`] with `now`. The scenario decides the next request from the
//! last answer, records each step, and skips what depends on a step that failed. It
//! never reads a clock and owns no socket, so its tests feed it answers by hand.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::explain::{self, Context, CredentialSource, RoundTripError};
use super::peers::PeerAudit;
use super::quality::{JitterOf, Samples, Stats};
use super::report::{Applicable, Step, StepName, TurnAllocReport};
use super::tcp_relay::TcpRelayReport;
use crate::error::UsageError;
use crate::net::address_class::AddressClass;
use crate::net::server_spec::{Host, ResolveError, ServerSpec};
use crate::net::tls::CertVerdict;
use crate::net::transport::Transport;
use crate::stun::error_code::ErrorCode;
use crate::turn::client::{Auth, Failure, Request, Success};
use crate::turn::server::Family;

/// The channel both allocations bind (the first of the range, RFC 8656 §12).
pub const CHANNEL: u16 = 0x4000;
const INDICATION_PAYLOAD: &[u8] = b"natkit turn-alloc indication probe";
const CHANNEL_PAYLOAD: &[u8] = b"natkit turn-alloc channel probe";

/// What the data steps send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPeer {
    /// A second allocation on the same server (the default): data goes client → relay
    /// A → relay B → client and back, and both ends read one clock.
    SecondAllocation,
    /// `--peer`: an external UDP echo peer.
    UdpEcho(SocketAddr),
}

/// The scenario's settings: the validated arguments, nothing that does I/O.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server as the user gave it (the report's `server`).
    pub server: String,
    pub spec: ServerSpec,
    pub transport: Transport,
    pub credentials: CredentialSource,
    /// `--realm`: the realm the server must announce.
    pub expected_realm: Option<String>,
    /// The relayed address's family to ask for (REQUESTED-ADDRESS-FAMILY).
    pub relay_family: Family,
    pub lifetime: u32,
    /// `--nonce-wait`: how long to idle before checking whether the first nonce went stale.
    pub nonce_wait: Option<Duration>,
    pub peer: DataPeer,
    /// `--peer-transport tcp`: the TCP echo peer of the RFC 6062 step.
    pub tcp_peer: Option<SocketAddr>,
    pub timeout: Duration,
}

/// Which of the two connections to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The allocation under test.
    Client,
    /// The second allocation, the data peer.
    Peer,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve the server's name: [`Input::Resolved`].
    Resolve,
    /// Open a connection to the server: [`Input::Connected`].
    Connect { side: Side, server: SocketAddr },
    /// Make a request on that side's connection: [`Input::Answered`].
    Request { side: Side, request: Request, auth: Auth },
    /// Send `payload` from the client allocation to `peer` (over `channel`, else in a Send
    /// indication); our second allocation, if it is the peer, checks it came from
    /// `relayed` and echoes it: [`Input::RoundTrip`].
    RoundTrip { peer: SocketAddr, relayed: SocketAddr, payload: &'static [u8], channel: Option<u16> },
    /// The quality test over [`CHANNEL`]: [`Input::Quality`].
    Quality,
    /// A STUN Binding request through the relay to `target`, the server's own loopback:
    /// [`Input::LoopbackAnswered`].
    LoopbackProbe { target: SocketAddr },
    /// Idle this long: [`Input::Waited`].
    Wait(Duration),
    /// The RFC 6062 step to this TCP echo peer: [`Input::TcpRelay`].
    TcpRelay { peer: SocketAddr, server: SocketAddr },
    /// Nothing left: take the report with [`Scenario::finish`].
    Done,
}

/// A connection the driver opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub local: SocketAddr,
    pub server: SocketAddr,
    /// TLS only: what the certificate check said.
    pub cert: Option<CertVerdict>,
}

/// The answer to a request, with what the client core learned from it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub result: Result<Success, Failure>,
    pub rtt: Duration,
    /// 401/438 rounds the client core answered by re-sending.
    pub auth_retries: u8,
    /// The realm and whether a nonce is known after this answer.
    pub realm: Option<String>,
    pub has_nonce: bool,
    /// 438 Stale Nonce answers this connection has seen so far.
    pub stale_nonces: u32,
}

/// What the driver hands back, one per [`Action`].
#[derive(Debug)]
pub enum Input {
    Resolved(Result<SocketAddr, ResolveError>),
    Connected(Result<Connected, String>),
    Answered(io::Result<Reply>),
    RoundTrip(Result<Duration, RoundTripError>),
    Quality(Samples),
    LoopbackAnswered(bool),
    Waited,
    TcpRelay(Box<TcpRelayReport>),
}

/// Where the script is: each stage waits for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Resolve,
    Connect,
    Binding,
    AllocateUnauthenticated,
    Allocate,
    ConnectPeer,
    AllocatePeer,
    Permission(Side),
    DataIndication,
    ChannelBind(Side),
    ChannelData,
    Quality,
    AuditPermission,
    AuditLoopback,
    NonceWait,
    NonceRefresh,
    Refresh,
    Deallocate,
    DeallocatePeer,
    TcpRelay,
    Done,
}

/// The running script and the report it builds.
pub struct Scenario {
    plan: Plan,
    stage: Stage,
    /// When the current step started.
    started: Instant,
    report: TurnAllocReport,
    server: Option<SocketAddr>,
    relayed: Option<SocketAddr>,
    /// The second allocation's relayed address, once it exists.
    peer_relayed: Option<SocketAddr>,
    indications_ok: bool,
    audit: Option<PeerAudit>,
    /// 438 answers the client connection had seen when the nonce wait began.
    stale_before: u32,
    last_stale: u32,
    nonce_note: String,
    /// The deallocation's answer, kept while the peer's allocation is removed too.
    deallocated: Option<Result<Success, Failure>>,
    /// The run reached its end without a failed step that stops it.
    finished: bool,
    bad_input: Option<UsageError>,
}

impl Scenario {
    pub fn new(plan: Plan, now: Instant) -> Self {
        let report = TurnAllocReport::not_run(&plan.server, plan.transport);
        Scenario {
            plan,
            stage: Stage::Resolve,
            started: now,
            report,
            server: None,
            relayed: None,
            peer_relayed: None,
            indications_ok: false,
            audit: None,
            stale_before: 0,
            last_stale: 0,
            nonce_note: String::new(),
            deallocated: None,
            finished: false,
            bad_input: None,
        }
    }

    /// What to do next.
    pub fn poll_action(&self) -> Action {
        let creds = Auth::Credentials;
        let req = |side, request, auth| Action::Request { side, request, auth };
        let alloc = Request::Allocate { lifetime: Some(self.plan.lifetime), family: self.plan.relay_family };
        let (Some(relayed), peer) = (self.relayed, self.data_peer()) else {
            return match self.stage {
                Stage::Resolve => Action::Resolve,
                Stage::Connect => match self.server {
                    Some(server) => Action::Connect { side: Side::Client, server },
                    None => Action::Done,
                },
                Stage::Binding => req(Side::Client, Request::Binding, Auth::Anonymous),
                Stage::AllocateUnauthenticated => req(Side::Client, alloc, Auth::Anonymous),
                Stage::Allocate => req(Side::Client, alloc, creds),
                _ => Action::Done,
            };
        };
        match (self.stage, peer) {
            (Stage::ConnectPeer, _) => match self.server {
                Some(server) => Action::Connect { side: Side::Peer, server },
                None => Action::Done,
            },
            (Stage::AllocatePeer, _) => {
                let auth = if self.plan.credentials == CredentialSource::None { Auth::Anonymous } else { creds };
                req(Side::Peer, alloc, auth)
            }
            (Stage::Permission(Side::Client), Some(peer)) => {
                req(Side::Client, Request::CreatePermission { peers: vec![peer] }, creds)
            }
            (Stage::Permission(Side::Peer), _) => {
                req(Side::Peer, Request::CreatePermission { peers: vec![relayed] }, creds)
            }
            (Stage::DataIndication, Some(peer)) => {
                Action::RoundTrip { peer, relayed, payload: INDICATION_PAYLOAD, channel: None }
            }
            (Stage::ChannelBind(Side::Client), Some(peer)) => {
                req(Side::Client, Request::ChannelBind { channel: CHANNEL, peer }, creds)
            }
            (Stage::ChannelBind(Side::Peer), _) => {
                req(Side::Peer, Request::ChannelBind { channel: CHANNEL, peer: relayed }, creds)
            }
            (Stage::ChannelData, Some(peer)) => {
                Action::RoundTrip { peer, relayed, payload: CHANNEL_PAYLOAD, channel: Some(CHANNEL) }
            }
            (Stage::Quality, _) => Action::Quality,
            (Stage::AuditPermission, _) => match self.audit.as_ref().and_then(PeerAudit::next_peer) {
                Some(p) => req(Side::Client, Request::CreatePermission { peers: vec![p] }, creds),
                None => Action::Done,
            },
            (Stage::AuditLoopback, _) => match self.audit.as_ref().and_then(PeerAudit::loopback_target) {
                Some(target) => Action::LoopbackProbe { target },
                None => Action::Done,
            },
            (Stage::NonceWait, _) => Action::Wait(self.plan.nonce_wait.unwrap_or_default()),
            (Stage::NonceRefresh | Stage::Refresh, _) => {
                req(Side::Client, Request::Refresh { lifetime: self.plan.lifetime }, creds)
            }
            (Stage::Deallocate, _) => req(Side::Client, Request::Refresh { lifetime: 0 }, creds),
            (Stage::DeallocatePeer, _) => req(Side::Peer, Request::Refresh { lifetime: 0 }, creds),
            (Stage::TcpRelay, _) => match (self.plan.tcp_peer, self.server) {
                (Some(peer), Some(server)) => Action::TcpRelay { peer, server },
                _ => Action::Done,
            },
            _ => Action::Done,
        }
    }

    /// The outcome of the last action.
    pub fn handle_input(&mut self, input: Input, now: Instant) {
        let stage = self.stage;
        match (stage, input) {
            (Stage::Resolve, Input::Resolved(r)) => self.resolved(r, now),
            (Stage::Connect, Input::Connected(r)) => self.connected(StepName::Connect, r, Stage::Binding, now),
            (Stage::ConnectPeer, Input::Connected(Err(e))) => self.fail(StepName::AllocatePeer, e, now),
            (Stage::ConnectPeer, Input::Connected(Ok(_))) => self.stage = Stage::AllocatePeer,
            (Stage::AuditPermission, Input::Answered(r)) => self.audited(r, now),
            (Stage::DeallocatePeer, Input::Answered(_)) => self.deallocated(now),
            (_, Input::Answered(Err(e))) => {
                let why = self.context().io_error(&e);
                self.fail(step_of(stage), why, now)
            }
            (_, Input::Answered(Ok(reply))) => {
                if side_of(stage) == Side::Client {
                    self.last_stale = reply.stale_nonces;
                }
                self.answered(reply, now)
            }
            (Stage::DataIndication, Input::RoundTrip(r)) => {
                match r {
                    Ok(rtt) => {
                        self.indications_ok = true;
                        let d = format!("Send → relay → Data and back, round trip {:.2} ms", ms(rtt));
                        self.pass(StepName::DataIndication, d, now);
                    }
                    // Not the end of the run: ChannelData is tried next, so the report can say
                    // which of the two data paths (RFC 8656 §11 and §12) the server relays.
                    Err(e) => {
                        let why = self.context().round_trip(&e, None);
                        self.record(StepName::DataIndication, false, why, now);
                    }
                }
                self.next(Stage::ChannelBind(Side::Client), now);
            }
            (Stage::ChannelData, Input::RoundTrip(r)) => self.channel_data(r, now),
            (Stage::Quality, Input::Quality(samples)) => {
                let jitter_of = match self.plan.peer {
                    DataPeer::SecondAllocation => JitterOf::Transit,
                    DataPeer::UdpEcho(_) => JitterOf::RoundTrip,
                };
                let stats = Stats::from_samples(&samples, jitter_of);
                let (passed, detail) = (stats.passed(), stats.detail());
                self.report.stats = Some(stats);
                if !passed {
                    return self.fail(StepName::Quality, detail, now);
                }
                self.pass(StepName::Quality, detail, now);
                if let (Some(server), Some(relayed)) = (self.server, self.relayed) {
                    self.audit = Some(PeerAudit::new(server, relayed));
                }
                self.next(Stage::AuditPermission, now);
            }
            (Stage::AuditLoopback, Input::LoopbackAnswered(answered)) => {
                if let Some(a) = self.audit.as_mut() {
                    a.loopback_answered(answered);
                }
                self.end_audit(now);
            }
            (Stage::NonceWait, Input::Waited) => self.stage = Stage::NonceRefresh,
            (Stage::TcpRelay, Input::TcpRelay(r)) => {
                let mut detail = r.detail.clone();
                if let Some(rtt) = &r.rtt_ms {
                    detail.push_str(&format!(", RTT min/avg/max {:.2}/{:.2}/{:.2} ms", rtt.min, rtt.avg, rtt.max));
                }
                self.record(StepName::TcpRelay, r.ok, detail, now);
                self.finished = r.ok;
                self.report.tcp_relay = Some(*r);
                self.stage = Stage::Done;
            }
            (stage, input) => {
                // A driver bug, not the server's doing: end the run and say so.
                self.fail(step_of(stage), format!("internal: {input:?} does not answer {stage:?}"), now)
            }
        }
    }

    /// The report, or the bad input that ended the run (a server name that does not
    /// exist: exit 2, no step table).
    pub fn finish(mut self) -> Result<TurnAllocReport, UsageError> {
        if let Some(e) = self.bad_input {
            return Err(e);
        }
        let applicable = Applicable {
            allocate_peer: self.plan.peer == DataPeer::SecondAllocation,
            tcp_relay: self.plan.tcp_peer.is_some(),
        };
        self.report.finish(applicable, self.finished);
        Ok(self.report)
    }

    fn data_peer(&self) -> Option<SocketAddr> {
        match self.plan.peer {
            DataPeer::SecondAllocation => self.peer_relayed,
            DataPeer::UdpEcho(p) => Some(p),
        }
    }

    fn has_peer_allocation(&self) -> bool {
        self.plan.peer == DataPeer::SecondAllocation
    }

    fn context(&self) -> Context<'_> {
        Context {
            transport: self.plan.transport,
            address: self.server,
            port: self.server.map(|a| a.port()).unwrap_or_else(|| self.plan.spec.port_for(self.plan.transport)),
            credentials: &self.plan.credentials,
            expected_realm: self.plan.expected_realm.as_deref(),
            timeout: self.plan.timeout,
            external_peer: !self.has_peer_allocation(),
        }
    }

    fn resolved(&mut self, r: Result<SocketAddr, ResolveError>, now: Instant) {
        match r {
            Ok(server) => {
                self.server = Some(server);
                self.report.address = Some(server);
                self.pass(StepName::Resolve, format!("{} is {server}", self.plan.spec.host), now);
                self.next(Stage::Connect, now);
            }
            Err(ResolveError::BadName(e)) => {
                self.bad_input = Some(e);
                self.stage = Stage::Done;
            }
            Err(e) => self.fail(StepName::Resolve, e.describe(self.plan.timeout), now),
        }
    }

    fn connected(&mut self, step: StepName, r: Result<Connected, String>, then: Stage, now: Instant) {
        match r {
            Ok(c) => {
                let host = match &self.plan.spec.host {
                    Host::Name(n) => n.clone(),
                    Host::Ip(ip) => ip.to_string(),
                };
                let (detail, warning) =
                    explain::connection(self.plan.transport, c.local, c.server, c.cert.as_ref(), &host);
                if let Some(w) = warning {
                    self.warn(w);
                }
                self.pass(step, detail, now);
                self.next(then, now);
            }
            Err(e) => self.fail(step, e, now),
        }
    }

    fn answered(&mut self, reply: Reply, now: Instant) {
        let stage = self.stage;
        match (stage, reply.result) {
            (Stage::Binding, Ok(s)) => {
                self.report.mapped = s.mapped;
                let m = s.mapped.map(|m| m.to_string()).unwrap_or_else(|| "no XOR-MAPPED-ADDRESS".into());
                let d = format!("server-reflexive address {m}, rtt {:.2} ms", ms(reply.rtt));
                self.pass(StepName::Binding, d, now);
                self.next(Stage::AllocateUnauthenticated, now);
            }
            (Stage::AllocateUnauthenticated, Err(Failure::Error { code: ErrorCode::Unauthenticated, .. })) => {
                let step = StepName::AllocateUnauthenticated;
                match (reply.realm, reply.has_nonce, &self.plan.expected_realm) {
                    (Some(r), true, Some(want)) if &r != want => self.fail(
                        step,
                        format!("401 with realm '{r}', but you expect '{want}': check the server's realm setting"),
                        now,
                    ),
                    (Some(r), true, _) => {
                        self.pass(step, format!("401 Unauthorized with realm '{r}' and a nonce, as it should"), now);
                        self.next(Stage::Allocate, now);
                        if self.plan.credentials == CredentialSource::None {
                            let d = "the server requires credentials: pass --user and --password, or --secret";
                            self.fail(StepName::Allocate, d.to_string(), now);
                        }
                    }
                    _ => self.fail(
                        step,
                        "401 without REALM and NONCE: the server does not follow RFC 8489 §9.2".into(),
                        now,
                    ),
                }
            }
            (Stage::AllocateUnauthenticated, Ok(s)) => {
                self.warn("the server does not require credentials: anyone can allocate relays on it (coturn: set lt-cred-mech or use-auth-secret)".into());
                self.pass(StepName::AllocateUnauthenticated, "allocation granted WITHOUT credentials".into(), now);
                self.next(Stage::Allocate, now);
                self.record(StepName::Allocate, true, "already allocated without credentials".into(), now);
                self.allocated(s, now);
            }
            (Stage::Allocate, Ok(s)) => {
                self.pass(StepName::Allocate, explain::allocation(&s, reply.auth_retries), now);
                self.allocated(s, now);
            }
            (Stage::AllocatePeer, Ok(Success { relayed: Some(r), .. })) => {
                self.pass(StepName::AllocatePeer, format!("second allocation {r} is the data peer"), now);
                self.peer_relayed = Some(r);
                self.next(Stage::Permission(Side::Client), now);
            }
            (Stage::AllocatePeer, Ok(_)) => {
                self.fail(StepName::AllocatePeer, "success without XOR-RELAYED-ADDRESS".into(), now)
            }
            (Stage::Permission(side), Ok(_)) => {
                if side == Side::Client && self.has_peer_allocation() {
                    return self.stage = Stage::Permission(Side::Peer);
                }
                let peer = self.data_peer().map(|p| p.to_string()).unwrap_or_default();
                let d = format!("permission for {peer} (and back) in {:.2} ms", ms(now - self.started));
                self.pass(StepName::CreatePermission, d, now);
                self.next(Stage::DataIndication, now);
            }
            (Stage::ChannelBind(side), Ok(_)) => {
                if side == Side::Client && self.has_peer_allocation() {
                    return self.stage = Stage::ChannelBind(Side::Peer);
                }
                let peer = self.data_peer().map(|p| p.to_string()).unwrap_or_default();
                self.pass(StepName::ChannelBind, format!("channel {CHANNEL:#06x} bound to {peer}"), now);
                self.next(Stage::ChannelData, now);
            }
            (Stage::Permission(side) | Stage::ChannelBind(side), Err(f)) => {
                let peer = match side {
                    Side::Client => self.data_peer(),
                    Side::Peer => self.relayed,
                };
                let step = step_of(stage);
                let why = match peer {
                    Some(p) => self.context().peer_failure(step, &f, p),
                    None => self.context().failure(step, &f),
                };
                self.fail(step, why, now)
            }
            (Stage::NonceRefresh, Ok(_)) => {
                let wait = self.plan.nonce_wait.unwrap_or_default().as_secs_f64();
                if self.last_stale > self.stale_before {
                    self.nonce_note =
                        format!("; the nonce went stale within {wait:.0} s (438) and a fresh one was accepted");
                } else {
                    self.warn(format!(
                        "the nonce was still accepted after {wait:.0} s idle: nonces may never go stale (coturn: --stale-nonce)"
                    ));
                    self.nonce_note = format!("; the first nonce was still accepted after {wait:.0} s");
                }
                self.stage = Stage::Refresh;
            }
            // A refused refresh after the wait is judged by the plain refresh that follows.
            (Stage::NonceRefresh, Err(_)) => self.stage = Stage::Refresh,
            (Stage::Refresh, Ok(s)) => {
                let l = s.lifetime.map(|l| format!("{l} s")).unwrap_or_else(|| "unspecified".into());
                let d = format!("lifetime now {l}{}", self.nonce_note);
                self.pass(StepName::Refresh, d, now);
                self.next(Stage::Deallocate, now);
            }
            (Stage::Deallocate, result) => {
                self.deallocated = Some(result);
                if self.has_peer_allocation() {
                    self.stage = Stage::DeallocatePeer;
                } else {
                    self.deallocated(now);
                }
            }
            (stage, Err(f)) => {
                let step = step_of(stage);
                let why = self.context().failure(step, &f);
                self.fail(step, why, now)
            }
            (stage, Ok(_)) => self.fail(step_of(stage), format!("internal: a success does not answer {stage:?}"), now),
        }
    }

    /// The allocation under test exists: check what it says, then find the data peer.
    fn allocated(&mut self, s: Success, now: Instant) {
        let Some(relayed) = s.relayed else {
            return self.fail(StepName::Allocate, "success response without XOR-RELAYED-ADDRESS".into(), now);
        };
        self.relayed = Some(relayed);
        self.report.relayed = Some(relayed);
        self.report.mapped = s.mapped.or(self.report.mapped);
        self.report.lifetime_s = s.lifetime;
        if s.integrity_ok.is_none() && self.plan.credentials != CredentialSource::None {
            self.warn(
                "the server's responses carry no MESSAGE-INTEGRITY: a client cannot tell them from forged ones".into(),
            );
        }
        if let Some(server) = self.server
            && AddressClass::of_canonical(server.ip()).is_public()
            && !AddressClass::of_canonical(relayed.ip()).is_public()
        {
            self.warn(format!(
                "the relayed address {relayed} is private while the server's address {} is public: peers cannot reach it (coturn: set external-ip; natkit relay: --external-ip)",
                server.ip()
            ));
        }
        let next = if self.has_peer_allocation() { Stage::ConnectPeer } else { Stage::Permission(Side::Client) };
        self.next(next, now);
    }

    fn channel_data(&mut self, r: Result<Duration, RoundTripError>, now: Instant) {
        match r {
            Ok(rtt) => {
                self.pass(StepName::ChannelData, format!("ChannelData round trip {:.2} ms", ms(rtt)), now);
                if !self.indications_ok
                    && let Some(step) = self.report.steps.iter_mut().find(|s| s.name == StepName::DataIndication)
                {
                    step.detail.push_str(
                        "; ChannelData is relayed (step channel-data): the server relays ChannelData but not Send/Data indications",
                    );
                }
                self.next(Stage::Quality, now);
            }
            Err(e) => {
                let which = if self.indications_ok {
                    "; Send/Data indications were relayed (step data-indication): the server relays indications but not ChannelData"
                } else {
                    "; Send/Data indications were not relayed either (step data-indication): the server relays neither"
                };
                let why = self.context().round_trip(&e, Some(CHANNEL));
                self.fail(StepName::ChannelData, format!("{why}{which}"), now)
            }
        }
    }

    fn audited(&mut self, r: io::Result<Reply>, now: Instant) {
        let Some(audit) = self.audit.as_mut() else { return self.end_audit(now) };
        match r {
            Ok(reply) => {
                self.last_stale = reply.stale_nonces;
                audit.answered(reply.result.is_ok());
            }
            // The connection broke: what was learned so far is the finding.
            Err(_) => audit.stop(),
        }
        match (audit.next_peer(), audit.loopback_target()) {
            (Some(_), _) => {}
            (None, Some(_)) => self.stage = Stage::AuditLoopback,
            (None, None) => self.end_audit(now),
        }
    }

    fn end_audit(&mut self, now: Instant) {
        let (detail, warnings) = match self.audit.take() {
            Some(a) => (a.detail(), a.warnings),
            None => ("refused nothing".to_string(), Vec::new()),
        };
        self.report.warnings.extend(warnings);
        self.pass(StepName::Audit, detail, now);
        match self.plan.nonce_wait {
            Some(_) => {
                self.stale_before = self.last_stale;
                self.next(Stage::NonceWait, now);
            }
            None => {
                self.nonce_note = "; nonce expiry not checked (use --nonce-wait 620 for coturn's 600 s default)".into();
                self.next(Stage::Refresh, now);
            }
        }
    }

    fn deallocated(&mut self, now: Instant) {
        match self.deallocated.take() {
            Some(Ok(_)) => {
                self.pass(StepName::Deallocate, "refresh with lifetime 0 deleted the allocation".into(), now);
                self.finished = true;
                self.next(Stage::TcpRelay, now);
            }
            Some(Err(f)) => {
                let why = self.context().failure(StepName::Deallocate, &f);
                self.fail(StepName::Deallocate, why, now)
            }
            None => self.fail(StepName::Deallocate, "internal: no deallocation answer".into(), now),
        }
    }

    /// Starts the next step at `now`.
    fn next(&mut self, stage: Stage, now: Instant) {
        self.stage = stage;
        self.started = now;
    }

    fn record(&mut self, name: StepName, ok: bool, detail: String, now: Instant) {
        let ms = (ms(now.saturating_duration_since(self.started)) * 1000.0).round() / 1000.0;
        self.report.steps.push(Step { name, ok, skipped: false, ms, detail });
    }

    fn pass(&mut self, name: StepName, detail: String, now: Instant) {
        self.record(name, true, detail, now);
    }

    /// Fails `name` and ends the run: the steps after it depend on it.
    fn fail(&mut self, name: StepName, detail: String, now: Instant) {
        self.record(name, false, detail, now);
        self.stage = Stage::Done;
    }

    fn warn(&mut self, w: String) {
        self.report.warnings.push(w);
    }
}

/// The connection a stage's request goes over.
fn side_of(stage: Stage) -> Side {
    match stage {
        Stage::ConnectPeer
        | Stage::AllocatePeer
        | Stage::Permission(Side::Peer)
        | Stage::ChannelBind(Side::Peer)
        | Stage::DeallocatePeer => Side::Peer,
        _ => Side::Client,
    }
}

/// The step a stage belongs to.
fn step_of(stage: Stage) -> StepName {
    match stage {
        Stage::Resolve => StepName::Resolve,
        Stage::Connect => StepName::Connect,
        Stage::Binding => StepName::Binding,
        Stage::AllocateUnauthenticated => StepName::AllocateUnauthenticated,
        Stage::Allocate => StepName::Allocate,
        Stage::ConnectPeer | Stage::AllocatePeer => StepName::AllocatePeer,
        Stage::Permission(_) => StepName::CreatePermission,
        Stage::DataIndication => StepName::DataIndication,
        Stage::ChannelBind(_) => StepName::ChannelBind,
        Stage::ChannelData => StepName::ChannelData,
        Stage::Quality => StepName::Quality,
        Stage::AuditPermission | Stage::AuditLoopback => StepName::Audit,
        Stage::NonceWait | Stage::NonceRefresh | Stage::Refresh => StepName::Refresh,
        Stage::Deallocate | Stage::DeallocatePeer => StepName::Deallocate,
        Stage::TcpRelay | Stage::Done => StepName::TcpRelay,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "198.51.100.1:3478";
    const RELAYED: &str = "198.51.100.1:50000";
    const PEER_RELAYED: &str = "198.51.100.1:50002";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn plan(peer: DataPeer, credentials: CredentialSource) -> Plan {
        Plan {
            server: "198.51.100.1".into(),
            spec: ServerSpec::parse("198.51.100.1").expect("spec"),
            transport: Transport::Udp,
            credentials,
            expected_realm: None,
            relay_family: Family::V4,
            lifetime: 600,
            nonce_wait: None,
            peer,
            tcp_peer: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn reply(result: Result<Success, Failure>) -> Input {
        Input::Answered(Ok(Reply {
            result,
            rtt: Duration::from_millis(1),
            auth_retries: 0,
            realm: Some("natkit.test".into()),
            has_nonce: true,
            stale_nonces: 0,
        }))
    }

    fn error(code: u16) -> Input {
        reply(Err(Failure::Error { code: ErrorCode::from_code(code), reason: "Reason".into() }))
    }

    fn relayed(a: &str) -> Success {
        Success { relayed: Some(addr(a)), lifetime: Some(600), integrity_ok: Some(true), ..Success::default() }
    }

    /// A server that does everything right: challenges the first Allocate, grants the
    /// rest, relays both data paths and refuses every audit permission.
    fn good_server(action: &Action) -> Input {
        match action {
            Action::Resolve => Input::Resolved(Ok(addr(SERVER))),
            Action::Connect { server, .. } => {
                Input::Connected(Ok(Connected { local: addr("192.0.2.9:40000"), server: *server, cert: None }))
            }
            Action::Request { request: Request::Allocate { .. }, auth: Auth::Anonymous, .. } => error(401),
            Action::Request { side: Side::Client, request: Request::Allocate { .. }, .. } => {
                reply(Ok(relayed(RELAYED)))
            }
            Action::Request { side: Side::Peer, request: Request::Allocate { .. }, .. } => {
                reply(Ok(relayed(PEER_RELAYED)))
            }
            Action::Request { request: Request::CreatePermission { peers }, .. } if peers[0].port() == 3478 => {
                error(403)
            }
            Action::Request { request: Request::Refresh { lifetime }, .. } => {
                reply(Ok(Success { lifetime: Some(*lifetime), ..Success::default() }))
            }
            Action::Request { .. } => reply(Ok(Success::default())),
            Action::RoundTrip { .. } => Input::RoundTrip(Ok(Duration::from_millis(2))),
            Action::Quality => Input::Quality(Samples { sent: 3, rtts: vec![1.0, 2.0, 1.0], transits: vec![] }),
            Action::LoopbackProbe { .. } => Input::LoopbackAnswered(false),
            Action::Wait(_) => Input::Waited,
            Action::TcpRelay { .. } | Action::Done => Input::Waited,
        }
    }

    /// Runs the scenario against `server` on a fake clock (1 ms per action).
    fn run(plan: Plan, mut server: impl FnMut(&Action) -> Input) -> (Vec<Action>, Result<TurnAllocReport, UsageError>) {
        let mut now = Instant::now();
        let mut s = Scenario::new(plan, now);
        let mut actions = Vec::new();
        loop {
            let a = s.poll_action();
            if a == Action::Done {
                break;
            }
            assert!(actions.len() < 100, "the scenario does not end: {actions:?}");
            now += Duration::from_millis(1);
            let input = server(&a);
            actions.push(a);
            s.handle_input(input, now);
        }
        (actions, s.finish())
    }

    fn steps(r: &TurnAllocReport) -> Vec<(StepName, bool, bool)> {
        r.steps.iter().map(|s| (s.name, s.ok, s.skipped)).collect()
    }

    fn step(r: &TurnAllocReport, name: StepName) -> &Step {
        r.steps.iter().find(|s| s.name == name).expect("step listed")
    }

    #[test]
    fn a_challenged_allocate_is_retried_with_credentials_and_every_step_runs() {
        let (actions, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), good_server);
        let r = r.expect("report");
        assert!(r.ok, "{:#?}", r.steps);
        assert_eq!(r.steps.len(), 14, "every step but the TCP one: {:?}", steps(&r));
        assert!(r.steps.iter().all(|s| s.ok && !s.skipped));
        assert_eq!(r.relayed, Some(addr(RELAYED)));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let allocs: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { side, request: Request::Allocate { .. }, auth } => Some((*side, *auth)),
                _ => None,
            })
            .collect();
        assert_eq!(
            allocs,
            vec![(Side::Client, Auth::Anonymous), (Side::Client, Auth::Credentials), (Side::Peer, Auth::Credentials)]
        );
        // Both allocations give each other a permission and bind the channel.
        let perms = actions
            .iter()
            .filter(|a| matches!(a, Action::Request { request: Request::CreatePermission { .. }, .. }))
            .count();
        assert_eq!(perms, 2 + 6, "two for the data test, six for the audit");
        assert_eq!(
            actions.last(),
            Some(&Action::Request {
                side: Side::Peer,
                request: Request::Refresh { lifetime: 0 },
                auth: Auth::Credentials
            })
        );
        assert!(step(&r, StepName::Refresh).detail.contains("nonce expiry not checked"));
        assert_eq!(step(&r, StepName::Resolve).ms, 1.0, "steps are timed on the caller's clock");
    }

    #[test]
    fn a_401_without_realm_and_nonce_fails_and_skips_the_steps_after_it() {
        let (actions, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), |a| match a {
            Action::Request { request: Request::Allocate { .. }, .. } => Input::Answered(Ok(Reply {
                result: Err(Failure::Error { code: ErrorCode::Unauthenticated, reason: "Unauthorized".into() }),
                rtt: Duration::ZERO,
                auth_retries: 0,
                realm: None,
                has_nonce: false,
                stale_nonces: 0,
            })),
            other => good_server(other),
        });
        let r = r.expect("report");
        assert!(!r.ok);
        let s = step(&r, StepName::AllocateUnauthenticated);
        assert!(!s.ok && s.detail.contains("RFC 8489 §9.2"), "{}", s.detail);
        assert_eq!(actions.len(), 4, "resolve, connect, binding, allocate: {actions:?}");
        let after: Vec<_> = r.steps.iter().skip(4).collect();
        assert_eq!(after.len(), 10);
        assert!(after.iter().all(|s| s.skipped && s.detail == "not run"));
    }

    #[test]
    fn without_credentials_a_challenging_server_fails_the_allocate_step() {
        let (actions, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::None), good_server);
        let r = r.expect("report");
        assert!(step(&r, StepName::AllocateUnauthenticated).ok);
        let s = step(&r, StepName::Allocate);
        assert!(!s.ok && !s.skipped && s.detail.contains("pass --user and --password"), "{}", s.detail);
        assert_eq!(actions.len(), 4, "no signed Allocate is tried: {actions:?}");
    }

    #[test]
    fn an_open_relay_is_flagged_and_the_anonymous_allocation_is_used() {
        let (actions, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::None), |a| match a {
            Action::Request { side: Side::Client, request: Request::Allocate { .. }, .. } => {
                reply(Ok(relayed(RELAYED)))
            }
            Action::Request { side: Side::Peer, request: Request::Allocate { .. }, auth, .. } => {
                assert_eq!(*auth, Auth::Anonymous, "no credentials to sign with");
                reply(Ok(relayed(PEER_RELAYED)))
            }
            other => good_server(other),
        });
        let r = r.expect("report");
        assert!(r.ok, "{:?}", steps(&r));
        assert_eq!(step(&r, StepName::Allocate).detail, "already allocated without credentials");
        assert!(r.warnings[0].contains("does not require credentials"), "{:?}", r.warnings);
        let client_allocs = actions
            .iter()
            .filter(|a| matches!(a, Action::Request { side: Side::Client, request: Request::Allocate { .. }, .. }))
            .count();
        assert_eq!(client_allocs, 1);
    }

    #[test]
    fn an_allocation_mismatch_is_explained_and_ends_the_run() {
        let (_, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), |a| match a {
            Action::Request { request: Request::Allocate { .. }, auth: Auth::Credentials, .. } => error(437),
            other => good_server(other),
        });
        let r = r.expect("report");
        let s = step(&r, StepName::Allocate);
        assert!(!s.ok && s.detail.contains("437 Reason: an allocation already exists"), "{}", s.detail);
        assert!(step(&r, StepName::AllocatePeer).skipped);
        assert!(!r.ok);
    }

    #[test]
    fn a_nonce_that_goes_stale_during_the_wait_is_noted_and_one_that_does_not_is_warned_about() {
        for (stale_after_wait, want_warning) in [(1, false), (0, true)] {
            let mut p = plan(DataPeer::UdpEcho(addr("203.0.113.5:7")), CredentialSource::LongTerm);
            p.nonce_wait = Some(Duration::from_secs(30));
            let mut waited = false;
            let (actions, r) = run(p, |a| match a {
                Action::Wait(d) => {
                    assert_eq!(*d, Duration::from_secs(30));
                    waited = true;
                    Input::Waited
                }
                Action::Request { request: Request::Refresh { lifetime: 600 }, .. } if waited => {
                    waited = false;
                    Input::Answered(Ok(Reply {
                        result: Ok(Success::default()),
                        rtt: Duration::ZERO,
                        auth_retries: stale_after_wait as u8,
                        realm: None,
                        has_nonce: true,
                        stale_nonces: stale_after_wait,
                    }))
                }
                other => good_server(other),
            });
            let r = r.expect("report");
            assert!(r.ok, "{:?}", steps(&r));
            let refreshes = actions
                .iter()
                .filter(|a| matches!(a, Action::Request { request: Request::Refresh { lifetime: 600 }, .. }))
                .count();
            assert_eq!(refreshes, 2, "one after the wait, then the refresh step's own");
            let detail = &step(&r, StepName::Refresh).detail;
            if want_warning {
                assert!(r.warnings.iter().any(|w| w.contains("nonces may never go stale")), "{:?}", r.warnings);
                assert!(detail.contains("the first nonce was still accepted after 30 s"), "{detail}");
            } else {
                assert!(r.warnings.is_empty(), "{:?}", r.warnings);
                assert!(detail.contains("went stale within 30 s (438)"), "{detail}");
            }
        }
    }

    #[test]
    fn a_failed_indication_does_not_stop_the_run_and_the_channel_step_names_the_path() {
        let (_, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), |a| match a {
            Action::RoundTrip { channel: None, .. } => Input::RoundTrip(Err(RoundTripError::NotAtPeer)),
            other => good_server(other),
        });
        let r = r.expect("report");
        assert!(!r.ok, "a failed step fails the run");
        let ind = step(&r, StepName::DataIndication);
        assert!(!ind.ok && !ind.skipped);
        assert!(ind.detail.contains("relays ChannelData but not Send/Data indications"), "{}", ind.detail);
        assert!(step(&r, StepName::Deallocate).ok, "the later steps still ran");
    }

    #[test]
    fn an_external_peer_needs_no_second_allocation() {
        let echo = addr("203.0.113.5:7");
        let (actions, r) = run(plan(DataPeer::UdpEcho(echo), CredentialSource::LongTerm), good_server);
        let r = r.expect("report");
        assert!(r.ok, "{:?}", steps(&r));
        assert!(!actions.iter().any(|a| matches!(a, Action::Connect { side: Side::Peer, .. })));
        assert!(!r.steps.iter().any(|s| s.name == StepName::AllocatePeer));
        assert!(actions.contains(&Action::Request {
            side: Side::Client,
            request: Request::ChannelBind { channel: CHANNEL, peer: echo },
            auth: Auth::Credentials
        }));
    }

    #[test]
    fn a_broken_connection_fails_the_step_with_the_address_and_transport() {
        let (_, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), |a| match a {
            Action::Request { request: Request::Binding, .. } => {
                Input::Answered(Err(io::Error::from(io::ErrorKind::ConnectionRefused)))
            }
            other => good_server(other),
        });
        let s = r.expect("report").steps.into_iter().find(|s| s.name == StepName::Binding).expect("binding");
        assert_eq!(
            s.detail,
            "port unreachable (ICMP): nothing listens on 198.51.100.1:3478 over UDP; check the server's port"
        );
    }

    #[test]
    fn a_server_name_that_does_not_exist_is_bad_input() {
        let (actions, r) = run(plan(DataPeer::SecondAllocation, CredentialSource::LongTerm), |a| match a {
            Action::Resolve => Input::Resolved(Err(ResolveError::BadName(UsageError::new("no such name")))),
            other => good_server(other),
        });
        assert_eq!(actions, vec![Action::Resolve]);
        assert_eq!(r.err().map(|e| e.to_string()), Some("no such name".into()));
    }

    #[test]
    fn the_tcp_step_runs_last_and_decides_the_run() {
        let mut p = plan(DataPeer::SecondAllocation, CredentialSource::LongTerm);
        p.transport = Transport::Tcp;
        p.tcp_peer = Some(addr("203.0.113.5:7"));
        let (actions, r) = run(p, |a| match a {
            Action::TcpRelay { peer, server } => {
                assert_eq!((*peer, *server), (addr("203.0.113.5:7"), addr(SERVER)));
                Input::TcpRelay(Box::new(TcpRelayReport::failed(*peer, "Connect: 447 Reason".into())))
            }
            other => good_server(other),
        });
        let r = r.expect("report");
        assert!(matches!(actions.last(), Some(Action::TcpRelay { .. })));
        let s = step(&r, StepName::TcpRelay);
        assert!(!s.ok && s.detail == "Connect: 447 Reason", "{}", s.detail);
        assert!(!r.ok);
    }
}
